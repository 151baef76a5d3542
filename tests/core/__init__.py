"""Tests of the Qt-free core (database, image store, queue, services, paths)."""
