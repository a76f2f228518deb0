"""cryptostream: live crypto prices from CoinCap through Apache Kafka into CSV files."""

__version__ = "0.1.0"
