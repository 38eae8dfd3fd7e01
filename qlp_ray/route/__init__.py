"""route stage of qlp_ray."""
