DROP TABLE keystore.erasures;
