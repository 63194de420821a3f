-- ovpnmon on PostgreSQL: what each role may do inside the database. Run once, as a superuser,
-- in the database ovpnmon-roles.sql made:
--   psql -v ON_ERROR_STOP=1 -d ovpnmon -f ovpnmon-grants.sql
-- Safe to run again. See docs/postgresql.md.

-- Nobody but the collector creates anything (PostgreSQL 15 already revokes it from PUBLIC).
REVOKE CREATE ON SCHEMA public FROM PUBLIC;
GRANT USAGE, CREATE ON SCHEMA public TO ovpnmon_collector;
GRANT USAGE ON SCHEMA public TO ovpnmon_api;

-- SELECT on every table the collector creates, now (a re-run after init-db) and later.
GRANT SELECT ON ALL TABLES IN SCHEMA public TO ovpnmon_api;
ALTER DEFAULT PRIVILEGES FOR ROLE ovpnmon_collector IN SCHEMA public
    GRANT SELECT ON TABLES TO ovpnmon_api;
