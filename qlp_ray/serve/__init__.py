"""serve stage of qlp_ray."""
