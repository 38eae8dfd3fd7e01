"""Ray actors that own devices (``device.DeviceActor``) and place workloads on them
(``scheduler.SchedulerActor``); ``launch`` starts them and keeps them in sync with the
devices discovered on every node."""
