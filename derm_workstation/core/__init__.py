"""The core: domain model, local store, image store, services. Never imports Qt."""
