"""actors stage of qlp_ray."""
