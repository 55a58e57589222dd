"""The daemon: config, data dir, state, lifecycle, admin interface, CLI."""
