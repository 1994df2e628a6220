"""The bus: ``connect`` (identities), ``provision`` (streams, consumers, buckets; the
provisioning identity only), ``publish`` (durable writes), ``consume`` (typed durable
consumers with explicit acks) and ``kv`` (compare-and-set state)."""
