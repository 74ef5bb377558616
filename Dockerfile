# One image for every nbstream stage: `nbstream ingest`, `nbstream process`, `nbstream sink NAME`.
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY schemas ./schemas
COPY producers ./producers
COPY processors ./processors
COPY sinks ./sinks
COPY nbstream ./nbstream
RUN pip install --no-cache-dir . && useradd --system --uid 10001 nbstream \
    && mkdir -p /var/lib/nbstream && chown nbstream /var/lib/nbstream
USER nbstream
WORKDIR /var/lib/nbstream
ENV NBSTREAM_CONFIG=/etc/nbstream/nbstream.yaml
ENTRYPOINT ["nbstream", "--log-format", "json"]
CMD ["--help"]
