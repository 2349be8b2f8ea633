ALTER TABLE phone_numbers DROP COLUMN throughput_mps;
