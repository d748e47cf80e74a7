"""The platforms clearlift syncs: one module per platform behind ``base.py``, each
registered once in ``registry.py`` (its client, token renewal, settings, warehouse tables,
API versions and sandbox)."""
