-- ovpnmon on PostgreSQL: the database and its two roles. Run once, as a superuser, from the
-- maintenance database:
--   psql -v ON_ERROR_STOP=1 -d postgres -f ovpnmon-roles.sql
-- then set the two passwords (\password ovpnmon_collector, \password ovpnmon_api) and run
-- ovpnmon-grants.sql in the new database. See docs/postgresql.md.

-- The collector: owns the database, creates and upgrades the schema (init-db), the only writer.
CREATE ROLE ovpnmon_collector LOGIN;
-- The API: reads, nothing else (it also opens every transaction READ ONLY).
CREATE ROLE ovpnmon_api LOGIN;

CREATE DATABASE ovpnmon OWNER ovpnmon_collector ENCODING 'UTF8' TEMPLATE template0;
REVOKE ALL ON DATABASE ovpnmon FROM PUBLIC;
GRANT CONNECT, TEMPORARY ON DATABASE ovpnmon TO ovpnmon_collector;
GRANT CONNECT ON DATABASE ovpnmon TO ovpnmon_api;
