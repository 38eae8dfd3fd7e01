"""improve stage of qlp_ray."""
