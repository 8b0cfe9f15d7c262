"""altmetric-harvester: the Altmetric Details Page API, harvested in bulk into SQL."""

__version__ = "0.1.0"
USER_AGENT = f"altmetric-harvester/{__version__} (+https://github.com/altmetric-harvester/altmetric-harvester)"
