"""Fleet: device registry, provisioning, releases and rollouts."""
