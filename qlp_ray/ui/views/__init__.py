"""The pages of the web UI, one Streamlit script each (run by ``qlp_ray/ui/app.py``)."""
