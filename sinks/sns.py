"""The ``sns`` sink: publishes envelopes to an AWS SNS topic with PublishBatch (boto3).

Each record becomes one SNS message: the body is the envelope (DESIGN §6) and the routing
attributes (``sinks.attributes``) travel as String message attributes, so subscription filter
policies can select on them. On a FIFO topic (ARN ending ``.fifo``) the message group is the
object key and the deduplication id is the ``egress_id``, so SNS keeps each object's order and
drops a replayed delivery within its five-minute deduplication window.

Batching and order: a batch is cut into PublishBatch calls of at most 10 entries whose sizes
(body plus attributes) stay within the topic's ``MaximumMessageSize``. One object's records go
in runs of up to 10 consecutive entries; run *n* of every object is sent in round *n*, the
calls of one round concurrently, so an object's later records never leave before the call
holding its earlier ones has completed (within one call SNS publishes FIFO entries in order).
After a retryable failure of a record, its object's later records are reported with the same
error, whether held back or already published behind it in the same call: the runner then
re-sends them in order, as duplicates with the same ``egress_id`` where they had gone out.

boto3 is synchronous: one client per sink, created in ``open``; a batch makes one thread hop
and fans its calls out to the sink's own pool. botocore's own retries are off (the runner
owns retries). ``open`` needs ``sns:GetTopicAttributes``; delivery needs ``sns:Publish``.

Error mapping: throttling, 5xx-style codes, timeouts and connection errors are retryable;
authorisation, not-found and validation codes are permanent; an unknown code is classified by
its HTTP status (429 and 5xx retryable, other 4xx permanent). A per-entry ``Failed`` result is
retryable for a throttling or server code, otherwise permanent when ``SenderFault`` is set.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING

import boto3
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    HTTPClientError,
    NoCredentialsError,
    ParamValidationError,
    PartialCredentialsError,
    ProfileNotFound,
)
from botocore.exceptions import ConnectionError as BotoConnectionError
from pydantic import Field, SecretStr, model_validator

from schemas.envelope import envelope_json
from schemas.records import SinkRecord
from sinks.attributes import routing_attributes
from sinks.base import (
    PartialBatchError,
    PermanentError,
    RetryableError,
    Sink,
    SinkConfigError,
    SinkContext,
    SinkOptions,
)

if TYPE_CHECKING:
    from mypy_boto3_sns.client import SNSClient
    from mypy_boto3_sns.type_defs import (
        BatchResultErrorEntryTypeDef,
        MessageAttributeValueTypeDef,
        PublishBatchRequestEntryTypeDef,
    )

__all__ = [
    "DEFAULT_MAX_BYTES",
    "MAX_ENTRIES",
    "PublishCall",
    "SnsSettings",
    "SnsSink",
    "classify_client_error",
    "classify_failed_entry",
    "plan_rounds",
]

# SNS's limit on PublishBatch entries per call.
MAX_ENTRIES = 10
# SNS's default MaximumMessageSize: one message, and the sum of one PublishBatch's messages.
DEFAULT_MAX_BYTES = 262_144
# The data type of every attribute (SNS counts name, type and value towards the size).
_STRING = "String"
# How much of an AWS error message goes into our error (and the dead letter).
_ERROR_TEXT_CHARS = 200

_TOPIC_ARN = re.compile(
    r"^arn:aws[a-z-]*:sns:(?P<region>[a-z0-9-]+):\d{12}:(?P<name>[A-Za-z0-9_-]{1,256})"
    r"(?P<fifo>\.fifo)?$"
)

# Codes that mean "the service is busy or broken right now": retry later.
_RETRYABLE_CODES = frozenset({
    "Throttling", "ThrottlingException", "ThrottledException", "TooManyRequestsException",
    "RequestThrottled", "RequestLimitExceeded", "KMSThrottling", "KMSThrottlingException",
    "ServiceUnavailable", "ServiceUnavailableException", "InternalError", "InternalFailure",
    "InternalErrorException", "RequestTimeout", "RequestTimeoutException",
    # Temporary credentials that expired mid-flight are refreshed by botocore on the next call.
    "ExpiredToken", "ExpiredTokenException", "RequestExpired",
})
# Codes that retrying cannot fix: the request, the topic or the credentials are wrong.
_PERMANENT_CODES = frozenset({
    "AuthorizationError", "InvalidClientTokenId", "SignatureDoesNotMatch",
    "UnrecognizedClientException", "IncompleteSignature", "MissingAuthenticationToken",
    "NotFound", "ResourceNotFound", "ValidationError", "ValidationException",
    "InvalidParameter", "InvalidParameterValue", "InvalidParameterException",
    "MissingParameter", "BatchRequestTooLong", "TooManyEntriesInBatchRequest",
    "BatchEntryIdsNotDistinct", "EmptyBatchRequest", "InvalidBatchEntryId",
    "EndpointDisabled", "PlatformApplicationDisabled", "InvalidSecurity",
    "KMSAccessDenied", "KMSDisabled", "KMSInvalidState", "KMSNotFound", "KMSOptInRequired",
})
# Codes that say the credentials were refused (never echo their message: it may quote a key).
_AUTH_CODES = frozenset({
    "AuthorizationError", "InvalidClientTokenId", "SignatureDoesNotMatch",
    "UnrecognizedClientException", "IncompleteSignature", "MissingAuthenticationToken",
    "ExpiredToken", "ExpiredTokenException",
})


class SnsSettings(SinkOptions):
    """An SNS sink's own settings (``sinks.<name>.*`` besides the shared ones)."""

    topic_arn: str = Field(
        description="ARN of the topic; a name ending in .fifo makes it a FIFO topic.",
    )
    region: str | None = Field(
        default=None, description="AWS region of the client; default: the topic ARN's region."
    )
    endpoint_url: str | None = Field(
        default=None, description="SNS endpoint URL, e.g. a local test server; default: AWS."
    )
    access_key_id: SecretStr | None = Field(
        default=None,
        description="Explicit access key id (use ${VAR}); default: the standard AWS chain.",
    )
    secret_access_key: SecretStr | None = Field(
        default=None, description="Secret access key paired with access_key_id (use ${VAR})."
    )
    session_token: SecretStr | None = Field(
        default=None, description="Session token of temporary explicit credentials (use ${VAR})."
    )
    profile: str | None = Field(
        default=None, description="Named profile of the shared AWS config/credentials files."
    )
    max_concurrency: int = Field(
        default=16, ge=1, le=256,
        description="PublishBatch calls in flight at once; also the HTTP connection pool size.",
    )
    connect_timeout: float = Field(
        default=5.0, gt=0, description="Seconds allowed to open a connection to SNS."
    )
    read_timeout: float = Field(
        default=10.0, gt=0, description="Seconds allowed for SNS to answer one call."
    )

    @model_validator(mode="after")
    def _check(self) -> SnsSettings:
        """Validate the ARN and that explicit credentials come complete and alone."""
        if not _TOPIC_ARN.match(self.topic_arn):
            raise ValueError(
                f"topic_arn {self.topic_arn!r} is not an SNS topic ARN "
                "(arn:aws:sns:<region>:<account>:<name>)"
            )
        if (self.access_key_id is None) != (self.secret_access_key is None):
            raise ValueError("access_key_id and secret_access_key must be set together")
        if self.session_token is not None and self.access_key_id is None:
            raise ValueError("session_token requires access_key_id and secret_access_key")
        if self.profile is not None and self.access_key_id is not None:
            raise ValueError("set either profile or access_key_id/secret_access_key, not both")
        return self

    @property
    def fifo(self) -> bool:
        """Whether the topic is a FIFO topic."""
        return self.topic_arn.endswith(".fifo")

    @property
    def client_region(self) -> str:
        """The region the client talks to: ``region`` or the ARN's."""
        if self.region:
            return self.region
        match = _TOPIC_ARN.match(self.topic_arn)
        return match["region"] if match else "us-east-1"


def _error_text(err: ClientError) -> tuple[str, str]:
    """Return the AWS error code and a message fit for logs (none for credential errors)."""
    error = err.response.get("Error", {})
    code = str(error.get("Code", "Unknown"))
    if code in _AUTH_CODES:
        return code, "credentials refused"
    return code, str(error.get("Message", ""))[:_ERROR_TEXT_CHARS]


def _retry_after(err: ClientError) -> float | None:
    """Return the seconds a ``Retry-After`` response header asks for, if any."""
    headers = err.response.get("ResponseMetadata", {}).get("HTTPHeaders", {})
    value = headers.get("retry-after")
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None


def classify_client_error(err: ClientError) -> RetryableError | PermanentError:
    """Return the contract error for an AWS error response, by code, else by HTTP status."""
    code, text = _error_text(err)
    message = f"SNS {code}: {text}" if text else f"SNS {code}"
    if code in _RETRYABLE_CODES or code.startswith("Throttl"):
        return RetryableError(message, _retry_after(err))
    if code in _PERMANENT_CODES or code.startswith("AccessDenied"):
        return PermanentError(message)
    status = err.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
    if status == 429 or status >= 500 or not status:
        return RetryableError(message, _retry_after(err))
    return PermanentError(message)


def classify_failed_entry(entry: BatchResultErrorEntryTypeDef) -> RetryableError | PermanentError:
    """Return the contract error for one ``Failed`` entry of a PublishBatch response."""
    code = entry.get("Code", "Unknown")
    message = f"SNS {code}: {entry.get('Message', '')[:_ERROR_TEXT_CHARS]}"
    if code in _RETRYABLE_CODES or code.startswith("Throttl"):
        return RetryableError(message)
    if entry.get("SenderFault", False):
        return PermanentError(message)
    return RetryableError(message)


def _classify_botocore(err: BotoCoreError) -> RetryableError | PermanentError:
    """Return the contract error for a client-side botocore failure."""
    if isinstance(err, ParamValidationError):
        return PermanentError(f"SNS request rejected by the client: {err}")
    # Connection errors and timeouts, and credential sources that did not answer (an instance
    # role's metadata service): all may recover.
    return RetryableError(f"{type(err).__name__}: {err}")


def _user_agent() -> str:
    """Return ``nbstream/<version>`` for botocore's user agent."""
    try:
        return f"nbstream/{version('nbstream')}"
    except PackageNotFoundError:  # a source tree that was never installed
        return "nbstream/0.0.0+source"


@dataclass(slots=True)
class PublishCall:
    """One PublishBatch call: the batch indices it carries, in order, and their byte sizes."""

    indices: list[int] = field(default_factory=list)
    size: int = 0


def _runs(indices: list[int], sizes: Sequence[int], limit: int) -> Iterator[PublishCall]:
    """Yield one object's records as runs of consecutive entries that fit in one call."""
    run = PublishCall()
    for index in indices:
        if run.indices and (
            len(run.indices) == MAX_ENTRIES or run.size + sizes[index] > limit
        ):
            yield run
            run = PublishCall()
        run.indices.append(index)
        run.size += sizes[index]
    if run.indices:
        yield run


def plan_rounds(
    keys: Sequence[str], sizes: Sequence[int], limit: int = DEFAULT_MAX_BYTES
) -> list[list[PublishCall]]:
    """Return the calls of each round: round *n* carries run *n* of every object key.

    ``keys[i]`` and ``sizes[i]`` describe record ``i``. Runs are packed first-fit into calls
    of at most ``MAX_ENTRIES`` entries and ``limit`` bytes; an entry larger than ``limit``
    travels alone, so SNS rejects only that one.
    """
    by_key: dict[str, list[int]] = {}
    for index, key in enumerate(keys):
        by_key.setdefault(key, []).append(index)
    runs_by_key = [list(_runs(indices, sizes, limit)) for indices in by_key.values()]
    rounds: list[list[PublishCall]] = []
    for n in range(max((len(r) for r in runs_by_key), default=0)):
        calls: list[PublishCall] = []
        for runs in runs_by_key:
            if n >= len(runs):
                continue
            run = runs[n]
            target = next(
                (c for c in calls if len(c.indices) + len(run.indices) <= MAX_ENTRIES
                 and c.size + run.size <= limit),
                None,
            )
            if target is None:
                calls.append(PublishCall(list(run.indices), run.size))
            else:
                target.indices.extend(run.indices)
                target.size += run.size
        rounds.append(calls)
    return rounds


class SnsSink(Sink[SnsSettings]):
    """Publishes each record as one SNS message, ten per PublishBatch call."""

    type_name = "sns"
    Settings = SnsSettings

    def __init__(self, name: str, settings: SnsSettings, context: SinkContext) -> None:
        super().__init__(name, settings, context)
        self._client: SNSClient | None = None
        self._pool: ThreadPoolExecutor | None = None
        self._max_bytes = DEFAULT_MAX_BYTES

    def _key(self, field_name: str) -> str:
        """Return the configuration key of one of this sink's fields."""
        return f"sinks.{self.name}.{field_name}"

    async def open(self) -> None:
        """Build the client and check the topic exists; raise SinkConfigError if unusable."""
        client = await asyncio.to_thread(self._connect)
        self._client = client
        self._pool = ThreadPoolExecutor(
            max_workers=self.settings.max_concurrency, thread_name_prefix=f"sns-{self.name}"
        )

    def _make_client(self) -> SNSClient:
        """Return a new SNS client for the settings; raise SinkConfigError if it cannot exist."""
        s = self.settings
        try:
            session = boto3.session.Session(
                aws_access_key_id=s.access_key_id.get_secret_value() if s.access_key_id else None,
                aws_secret_access_key=(
                    s.secret_access_key.get_secret_value() if s.secret_access_key else None
                ),
                aws_session_token=s.session_token.get_secret_value() if s.session_token else None,
                profile_name=s.profile,
                region_name=s.client_region,
            )
        except ProfileNotFound:
            raise SinkConfigError(
                f"{self._key('profile')}: AWS profile {s.profile!r} not found"
            ) from None
        config = Config(
            max_pool_connections=s.max_concurrency,
            connect_timeout=s.connect_timeout,
            read_timeout=s.read_timeout,
            # One attempt per call: the runner owns retries, backoff and dead-lettering.
            retries={"mode": "standard", "total_max_attempts": 1},
            user_agent_extra=_user_agent(),
        )
        try:
            return session.client("sns", endpoint_url=s.endpoint_url, config=config)
        except (BotoCoreError, ValueError) as err:
            raise SinkConfigError(f"{self._key('endpoint_url')}: {err}") from None

    def _connect(self) -> SNSClient:
        """Return a client after GetTopicAttributes succeeded (blocking; runs in a thread)."""
        s = self.settings
        client = self._make_client()
        try:
            attributes = client.get_topic_attributes(TopicArn=s.topic_arn)["Attributes"]
        except ClientError as err:
            client.close()
            raise self._open_error(err) from None
        except (NoCredentialsError, PartialCredentialsError) as err:
            client.close()
            raise SinkConfigError(
                f"sinks.{self.name}: no usable AWS credentials ({type(err).__name__}); set "
                "access_key_id/secret_access_key, profile, or the standard AWS environment"
            ) from None
        except (BotoConnectionError, HTTPClientError) as err:
            client.close()
            where = s.endpoint_url or f"the AWS endpoint of {s.client_region}"
            raise SinkConfigError(
                f"{self._key('endpoint_url')}: cannot reach SNS at {where} for topic "
                f"{s.topic_arn}: {type(err).__name__}"
            ) from None
        except BotoCoreError as err:
            client.close()
            raise SinkConfigError(
                f"sinks.{self.name}: cannot check topic {s.topic_arn}: {type(err).__name__}"
            ) from None
        try:
            # A topic may allow messages (and batches) up to 1 MiB; the default is 256 KiB.
            self._max_bytes = int(attributes.get("MaximumMessageSize", DEFAULT_MAX_BYTES))
        except ValueError:
            self._max_bytes = DEFAULT_MAX_BYTES
        return client

    def _open_error(self, err: ClientError) -> SinkConfigError:
        """Return the start-up error for a GetTopicAttributes failure."""
        code, text = _error_text(err)
        arn = self.settings.topic_arn
        if code in ("NotFound", "ResourceNotFound"):
            return SinkConfigError(f"{self._key('topic_arn')}: topic {arn} does not exist")
        if code in _AUTH_CODES or code.startswith("AccessDenied"):
            return SinkConfigError(
                f"sinks.{self.name}: AWS refused the credentials for topic {arn} ({code}); "
                "the sink needs sns:GetTopicAttributes and sns:Publish"
            )
        if code.startswith("InvalidParameter"):
            return SinkConfigError(f"{self._key('topic_arn')}: {arn} rejected: {code}: {text}")
        return SinkConfigError(f"sinks.{self.name}: cannot check topic {arn}: {code}: {text}")

    async def close(self) -> None:
        """Stop the call pool and close the client's connections."""
        if self._pool is not None:
            # An abandoned batch may still be running; never block the event loop on it.
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None
        if self._client is not None:
            self._client.close()
            self._client = None

    async def write_batch(self, records: Sequence[SinkRecord]) -> None:
        """Publish every record; raise PartialBatchError naming the ones that failed."""
        if not records:
            return
        client, pool = self._client, self._pool
        if client is None or pool is None:
            raise RetryableError("sns sink is not open")
        failed = await asyncio.to_thread(self._publish, client, pool, records)
        if not failed:
            return
        errors = {id(e) for e in failed.values()}
        if len(failed) == len(records) and len(errors) == 1:
            # One failure for everything (the endpoint is down): report it as it is.
            raise next(iter(failed.values()))
        raise PartialBatchError(failed)

    def _attributes(self, record: SinkRecord) -> dict[str, MessageAttributeValueTypeDef]:
        """Return the routing attributes as SNS String message attributes."""
        # SNS refuses an empty attribute value; an absent attribute filters the same way.
        return {
            name: {"DataType": _STRING, "StringValue": value}
            for name, value in routing_attributes(record).items()
            if value
        }

    def _entries(
        self, records: Sequence[SinkRecord]
    ) -> tuple[list[PublishBatchRequestEntryTypeDef], list[int]]:
        """Return one request entry per record, stamped now, and each entry's SNS size."""
        now = self.context.now()
        fifo = self.settings.fifo
        entries: list[PublishBatchRequestEntryTypeDef] = []
        sizes: list[int] = []
        for index, record in enumerate(records):
            body = envelope_json(record, now)
            attributes = self._attributes(record)
            entry: PublishBatchRequestEntryTypeDef = {
                "Id": str(index), "Message": body.decode(), "MessageAttributes": attributes}
            if fifo:
                entry["MessageGroupId"] = record.object_key
                entry["MessageDeduplicationId"] = record.egress_id
            entries.append(entry)
            sizes.append(len(body) + sum(
                len(k) + len(_STRING) + len(v["StringValue"].encode())
                for k, v in attributes.items()))
        return entries, sizes

    def _publish(
        self, client: SNSClient, pool: ThreadPoolExecutor, records: Sequence[SinkRecord]
    ) -> dict[int, RetryableError | PermanentError]:
        """Publish the batch round by round (blocking); return the failures by index."""
        entries, sizes = self._entries(records)
        keys = [r.object_key for r in records]
        rounds = plan_rounds(keys, sizes, self._max_bytes)
        failed: dict[int, RetryableError | PermanentError] = {}
        stopped: dict[str, RetryableError] = {}  # object key -> the error that stopped it
        for n, calls in enumerate(rounds):
            if n:
                # Later rounds carry only the busiest objects: stamp them when they leave.
                now = self.context.now()
                for call in calls:
                    for index in call.indices:
                        entries[index]["Message"] = envelope_json(records[index], now).decode()
            todo: list[PublishCall] = []
            for call in calls:
                held = [i for i in call.indices if keys[i] in stopped]
                for index in held:
                    failed[index] = stopped[keys[index]]
                if len(held) < len(call.indices):
                    todo.append(PublishCall([i for i in call.indices if keys[i] not in stopped]))
            if len(todo) == 1:
                results = [self._call(client, entries, todo[0].indices)]
            else:
                futures = [pool.submit(self._call, client, entries, c.indices) for c in todo]
                wait(futures)
                results = [f.result() for f in futures]
            for call, outcome in zip(todo, results, strict=True):
                for index in call.indices:
                    key = keys[index]
                    err = stopped.get(key) or outcome.get(index)
                    if err is None:
                        continue
                    failed[index] = err
                    if isinstance(err, RetryableError):
                        stopped.setdefault(key, err)
        return failed

    def _call(
        self, client: SNSClient, entries: Sequence[PublishBatchRequestEntryTypeDef],
        indices: list[int],
    ) -> Mapping[int, RetryableError | PermanentError]:
        """Make one PublishBatch call; return the failures among ``indices``."""
        try:
            response = client.publish_batch(
                TopicArn=self.settings.topic_arn,
                PublishBatchRequestEntries=[entries[i] for i in indices],
            )
        except ClientError as err:
            return dict.fromkeys(indices, classify_client_error(err))
        except BotoCoreError as err:
            return dict.fromkeys(indices, _classify_botocore(err))
        by_id = {str(i): i for i in indices}
        failures: dict[int, RetryableError | PermanentError] = {
            by_id[f["Id"]]: classify_failed_entry(f)
            for f in response.get("Failed", []) if f.get("Id") in by_id}
        answered = {by_id[s["Id"]] for s in response.get("Successful", [])
                    if s.get("Id") in by_id}
        missing = [i for i in indices if i not in answered and i not in failures]
        if missing:
            unknown = RetryableError("SNS reported no result for the entry")
            failures.update(dict.fromkeys(missing, unknown))
        return failures
