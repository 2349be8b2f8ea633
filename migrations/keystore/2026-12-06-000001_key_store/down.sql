DROP TABLE keystore.raw_keys;
DROP TABLE keystore.data_keys;
DROP SCHEMA keystore;
