"""registry stage of qlp_ray."""
