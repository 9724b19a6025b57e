//! PostgreSQL connections: conninfo handling and the SQL the other rooms need.
