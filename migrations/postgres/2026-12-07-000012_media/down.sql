DROP TABLE media_downloads;
