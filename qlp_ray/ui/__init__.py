"""The web UI (``qlp ui``): a Streamlit app over the HTTP API — the 4-step training wizard
and the admin console. It talks to the platform only through :class:`qlp_ray.client.Client`,
so it works against any gateway URL; pure helpers live in :mod:`qlp_ray.ui.logic`.
"""

from pathlib import Path

APP_PATH = Path(__file__).resolve().parent / "app.py"
"""The Streamlit entry script (``streamlit run`` takes a file)."""
URL_ENV = "QLP_UI_GATEWAY_URL"
"""The gateway URL the UI starts with (the sidebar can change it)."""
KEY_ENV = "QLP_UI_API_KEY"
"""The API key the UI starts with (the admin key: training and the console need it)."""

__all__ = ["APP_PATH", "KEY_ENV", "URL_ENV"]
