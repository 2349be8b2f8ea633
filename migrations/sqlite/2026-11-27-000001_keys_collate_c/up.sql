-- PostgreSQL's migration of this name gives identifier columns COLLATE "C", so index
-- comparisons skip the locale. SQLite compares text byte by byte (BINARY) already:
-- nothing to change here. The migration exists so both backends carry the same list.
SELECT 1;
