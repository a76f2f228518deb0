"""cryptostream: live crypto prices from CoinCap through Apache Kafka into CSV files."""

#: The one place of the version: the package metadata (pyproject.toml), `cryptostream
#: --version`, the dashboard footer and the image label all read it (CHANGELOG.md too).
__version__ = "0.4.0"
