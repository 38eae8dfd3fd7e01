"""data stage of qlp_ray."""
