"""WSGI entry point: `gunicorn -c gunicorn.conf.py wsgi:app`."""
from omni_mev import create_app

app = create_app()
