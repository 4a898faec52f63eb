"""pycontainer."""
