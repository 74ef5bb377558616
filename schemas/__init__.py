"""The contract layer: Avro schemas, records, serde, topic names, identity, envelope and config.

Every stage imports this package; it imports no stage.
"""
