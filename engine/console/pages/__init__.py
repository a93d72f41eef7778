"""One module per console page (or page family); their routes are in engine/console/routes.py."""
