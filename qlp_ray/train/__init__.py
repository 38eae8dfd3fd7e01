"""train stage of qlp_ray."""
