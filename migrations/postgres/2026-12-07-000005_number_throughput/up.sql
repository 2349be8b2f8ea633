-- A number's throughput as Meta last announced it (phone_number_quality_update,
-- THROUGHPUT_UPGRADE: 1,000 messages a second); none: outbound.default_mps.
ALTER TABLE phone_numbers ADD COLUMN throughput_mps INTEGER;
