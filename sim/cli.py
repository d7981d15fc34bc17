"""placeholder replaced by the simulator work."""
def sim_command() -> None:
    """Placeholder."""
