"""Producers: the stage that turns NetBox webhooks into records on the raw topic."""
