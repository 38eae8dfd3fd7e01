"""tune stage of qlp_ray."""
