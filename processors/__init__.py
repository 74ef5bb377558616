"""Processors: Faust agents that match NetBox events against rules and route them to sink topics."""
