"""models stage of qlp_ray."""
