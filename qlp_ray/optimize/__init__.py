"""optimize stage of qlp_ray."""
