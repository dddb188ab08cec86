"""Unbounded sources: Kafka (`kafka/`), Pulsar, Pub/Sub, Redis Streams, WebSocket,
and the webhook receiver (`webhooks`, an ASGI app that lands events in Redis
Streams or Kafka for the pipeline to read). Message payloads are decoded to
Arrow the same way for all of them (`_messages`).
"""
