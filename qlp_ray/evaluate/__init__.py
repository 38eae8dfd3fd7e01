"""evaluate stage of qlp_ray."""
