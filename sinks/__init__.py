"""The sink stage: one worker per sink consumes ``netbox.sink.<name>`` and delivers it onward.

``base`` holds the sink contract, ``registry`` maps type names to implementations, ``runner``
owns batching, retries, dead-lettering and offsets; every other module is one destination.
"""
