"""Protocol libraries: transports and pure codecs, with no Ray, Kafka or database imports."""
