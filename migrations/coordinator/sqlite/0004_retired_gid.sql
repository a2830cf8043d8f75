-- Gids of transactions removed by retention. Participants keep barrier rows by gid, so a
-- gid used again would find the old rows and be taken for a duplicate: a client-chosen
-- gid is refused once it is here. One short row per purged transaction.
CREATE TABLE retired_gid (
    gid        TEXT PRIMARY KEY NOT NULL,
    retired_at INTEGER NOT NULL
) STRICT;
