"""Publishing a shadow by renaming it over its target, and telling when that is safe.

Replacing the target's rows (``DELETE`` + ``INSERT … SELECT``) writes every row a second time, into
a table whose indexes are maintained row by row, and leaves the old rows dead in the target. A
rename writes nothing: the shadow gets the target's indexes (built in bulk, once), constraints, NOT
NULLs, grants and comments, then, in the same transaction, the target is dropped and the shadow
takes its name. That is only the same table to its readers if nothing else refers to the target's
identity, so ``rename_obstacles`` lists what would be lost: a dependent view, rule or function, a
foreign key either way, a trigger, policy, sequence default, statistics object, publication entry,
inheritance or partitioning, storage settings, column settings, another owner, grants made by
other roles, columns that differ from the shadow. Any of them and the caller keeps the row swap.

``DROP TABLE`` without ``CASCADE`` is the last guard: an object made to depend on the target after
the check makes the drop fail, and the whole publish rolls back with the target untouched.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

from cm_datacopy.postgres.sql import pg_name_text

# Privileges ``aclexplode`` can name on a table; anything else would not be granted by name.
_TABLE_PRIVILEGES = {"SELECT", "INSERT", "UPDATE", "DELETE", "TRUNCATE", "REFERENCES", "TRIGGER"}

_OBSTACLES = """
WITH t AS (SELECT * FROM pg_class WHERE oid = %(t)s), s AS (SELECT * FROM pg_class WHERE oid = %(s)s)
SELECT reason FROM (
  SELECT 'it is partitioned, a partition or not a plain table' AS reason FROM t
   WHERE relkind <> 'r' OR relispartition
  UNION ALL SELECT 'it takes part in table inheritance' FROM t
   WHERE EXISTS (SELECT FROM pg_inherits WHERE inhrelid = t.oid OR inhparent = t.oid)
  UNION ALL SELECT 'it is owned by another role' FROM t
   WHERE relowner <> (SELECT oid FROM pg_roles WHERE rolname = current_user)
  UNION ALL SELECT 'it has storage settings (unlogged, tablespace, options, replica identity or type)' FROM t
   WHERE relpersistence <> 'p' OR reltablespace <> 0 OR reloptions IS NOT NULL OR reloftype <> 0
      OR relreplident <> 'd'
  UNION ALL SELECT 'it has row level security' FROM t WHERE relrowsecurity OR relforcerowsecurity
  UNION ALL SELECT 'a grant on it was made by a role other than its owner' FROM t
   WHERE EXISTS (SELECT FROM aclexplode(t.relacl) a WHERE a.grantor <> t.relowner)
  UNION ALL SELECT 'the shadow has grants of its own (default privileges) that the target does not' FROM t, s
   WHERE t.relacl IS NULL AND s.relacl IS NOT NULL
  UNION ALL SELECT 'the shadow is in another schema' FROM t, s WHERE t.relnamespace <> s.relnamespace
  UNION ALL SELECT 'it belongs to an extension or has a security label' FROM t
   WHERE EXISTS (SELECT FROM pg_depend WHERE classid = 'pg_class'::regclass AND objid = t.oid AND deptype = 'e')
      OR EXISTS (SELECT FROM pg_seclabel WHERE classoid = 'pg_class'::regclass AND objoid = t.oid)
  UNION ALL SELECT 'a column has its own grants, settings, default, identity or generation' FROM t
   WHERE EXISTS (SELECT FROM pg_attribute a WHERE a.attrelid = t.oid AND a.attnum > 0 AND NOT a.attisdropped
                 AND (a.attacl IS NOT NULL OR coalesce(a.attstattarget, -1) <> -1
                      OR a.attidentity <> '' OR a.attgenerated <> '' OR a.atthasdef))
  UNION ALL SELECT 'its columns differ from the shadow''s (names, order, types, collations or storage)'
   WHERE (SELECT array_agg(ROW(attname, atttypid, atttypmod, attcollation, attstorage) ORDER BY attnum)::text
            FROM pg_attribute WHERE attrelid = %(t)s AND attnum > 0 AND NOT attisdropped)
      IS DISTINCT FROM
         (SELECT array_agg(ROW(attname, atttypid, atttypmod, attcollation, attstorage) ORDER BY attnum)::text
            FROM pg_attribute WHERE attrelid = %(s)s AND attnum > 0 AND NOT attisdropped)
  UNION ALL SELECT 'an index is invalid, clustered, in a tablespace or not rebuildable' FROM t
   WHERE EXISTS (SELECT FROM pg_index i JOIN pg_class ic ON ic.oid = i.indexrelid
                 WHERE i.indrelid = t.oid AND (NOT i.indisvalid OR NOT i.indisready OR i.indisclustered
                                                OR ic.reltablespace <> 0))
  UNION ALL SELECT DISTINCT pg_describe_object(d.classid, d.objid, d.objsubid) || ' depends on it'
    FROM pg_depend d, t
   WHERE ((d.refclassid = 'pg_class'::regclass AND d.refobjid = t.oid)
          OR (d.refclassid = 'pg_type'::regclass AND d.refobjid = t.reltype))
     AND d.deptype NOT IN ('i', 'e')
     AND NOT (d.classid = 'pg_class'::regclass
              AND d.objid IN (SELECT indexrelid FROM pg_index WHERE indrelid = t.oid))
     AND NOT (d.classid = 'pg_constraint'::regclass
              AND d.objid IN (SELECT oid FROM pg_constraint WHERE conrelid = t.oid AND contype IN ('p', 'u', 'c', 'x')))
) r
"""

# The target's indexes: constraint-backed ones are re-added as constraints, the others from their
# definition, whose head ``pg_get_indexdef`` writes in one fixed form (checked, else not rebuildable).
_INDEXES = """
SELECT ic.relname, con.conname, con.contype, pg_get_constraintdef(con.oid), pg_get_indexdef(i.indexrelid),
       'CREATE ' || CASE WHEN i.indisunique THEN 'UNIQUE ' ELSE '' END || 'INDEX ' || quote_ident(ic.relname)
       || ' ON ' || quote_ident(n.nspname) || '.' || quote_ident(c.relname) || ' USING ',
       obj_description(i.indexrelid, 'pg_class'), obj_description(con.oid, 'pg_constraint')
FROM pg_index i JOIN pg_class ic ON ic.oid = i.indexrelid JOIN pg_class c ON c.oid = i.indrelid
JOIN pg_namespace n ON n.oid = c.relnamespace
LEFT JOIN pg_constraint con
       ON con.conindid = i.indexrelid AND con.conrelid = i.indrelid AND con.contype IN ('p', 'u', 'x')
WHERE i.indrelid = %(t)s ORDER BY ic.relname
"""

_CHECKS = """
SELECT conname, pg_get_constraintdef(oid), obj_description(oid, 'pg_constraint')
FROM pg_constraint WHERE conrelid = %(t)s AND contype = 'c' ORDER BY conname
"""

_COLUMNS = """
SELECT t.attname, t.attnotnull, s.attnotnull, col_description(%(t)s, t.attnum)
FROM pg_attribute t JOIN pg_attribute s ON s.attrelid = %(s)s AND s.attname = t.attname
WHERE t.attrelid = %(t)s AND t.attnum > 0 AND NOT t.attisdropped ORDER BY t.attnum
"""

_ACL = """
SELECT t.relacl IS NOT NULL, obj_description(t.oid, 'pg_class'),
       ARRAY(SELECT DISTINCT coalesce(pg_get_userbyid(NULLIF(a.grantee, 0)), '') FROM aclexplode(s.relacl) a)
FROM pg_class t, pg_class s WHERE t.oid = %(t)s AND s.oid = %(s)s
"""

# Grantee '' is PUBLIC.
_GRANTS = """
SELECT coalesce(pg_get_userbyid(NULLIF(a.grantee, 0)), ''), a.privilege_type, a.is_grantable
FROM pg_class t, aclexplode(t.relacl) a WHERE t.oid = %(t)s ORDER BY 1, 2
"""


@dataclass(frozen=True)
class Relations:
    """The target and its shadow, by OID (read under the publish's lock)."""

    schema: str
    target: str
    shadow: str
    target_oid: int
    shadow_oid: int

    @property
    def ids(self) -> dict[str, int]:
        return {"t": self.target_oid, "s": self.shadow_oid}


def relations(cur: psycopg.Cursor[Any], schema: str, target: str, shadow_schema: str, shadow: str) -> Relations:
    """Both tables' OIDs (both exist: the publish has locked and counted them)."""
    cur.execute(
        "SELECT to_regclass(%s)::oid, to_regclass(%s)::oid",
        (f"{pg_name_text(schema)}.{pg_name_text(target)}", f"{pg_name_text(shadow_schema)}.{pg_name_text(shadow)}"),
    )
    t, s = cur.fetchone()  # type: ignore[misc]
    return Relations(schema, target, shadow, int(t), int(s))


def rename_obstacles(cur: psycopg.Cursor[Any], rel: Relations) -> list[str]:
    """Why renaming the shadow over the target would change what the target is to others (empty: safe)."""
    cur.execute(_OBSTACLES, rel.ids)
    reasons = [r for (r,) in cur.fetchall()]
    cur.execute(_INDEXES, rel.ids)
    for name, constraint, _, _, definition, head, _, _ in cur.fetchall():
        if constraint is None and not definition.startswith(head):
            reasons.append(f"index {name} cannot be rebuilt from its definition")
    return reasons


def swap_by_rename(cur: psycopg.Cursor[Any], rel: Relations, drop_indexes: list[str], lock_wait_seconds: int) -> None:
    """Give the shadow everything the target has, then drop the target and give the shadow its name.

    Runs inside the publish's transaction, which holds the target in SHARE ROW EXCLUSIVE mode (no
    writers, readers welcome) while the shadow's indexes are built; only the final drop and renames
    take ACCESS EXCLUSIVE, for as long as catalog updates take. That lock waits for running readers,
    and new readers queue behind the wait, so it waits at most ``lock_wait_seconds``: then
    ``LockNotAvailable`` is raised, and the caller (inside a savepoint) swaps rows instead, which
    readers do not block. ``drop_indexes``: the shadow's own indexes (its chunk-key index), which the
    published table does not keep.
    """
    shadow = sql.Identifier(rel.schema, rel.shadow)
    target = sql.Identifier(rel.schema, rel.target)
    for index in drop_indexes:
        cur.execute(sql.SQL("DROP INDEX IF EXISTS {}").format(sql.Identifier(rel.schema, index)))
    tag = hashlib.sha256(f"{rel.schema}.{rel.shadow}".encode()).hexdigest()[:10]
    after: list[sql.Composable] = []  # once the shadow has the target's name: final names, then comments
    comments: list[sql.Composable] = []
    cur.execute(_INDEXES, rel.ids)
    for i, (name, constraint, _, condef, definition, head, comment, con_comment) in enumerate(cur.fetchall()):
        temp_name = f"cmdc_{tag}_{i}"  # index names are unique per schema: the target's are still taken
        temporary = sql.Identifier(temp_name)
        if constraint is not None:
            # condef: written by PostgreSQL from its catalog
            cur.execute(sql.SQL("ALTER TABLE {} ADD CONSTRAINT {} {}").format(shadow, temporary, sql.SQL(condef)))
            after.append(
                sql.SQL("ALTER TABLE {} RENAME CONSTRAINT {} TO {}").format(
                    target, temporary, sql.Identifier(constraint)
                )
            )
            if name != constraint:  # its index was renamed after the constraint was made
                after.append(
                    sql.SQL("ALTER INDEX {} RENAME TO {}").format(
                        sql.Identifier(rel.schema, constraint), sql.Identifier(name)
                    )
                )
            if con_comment is not None:
                comments.append(_comment("CONSTRAINT {} ON {}", con_comment, sql.Identifier(constraint), target))
        else:
            unique = "UNIQUE " if definition.startswith("CREATE UNIQUE ") else ""
            cur.execute(
                sql.SQL("CREATE " + unique + "INDEX {} ON {} USING {}").format(
                    temporary,
                    shadow,
                    sql.SQL(definition[len(head) :]),  # written by PostgreSQL from its catalog
                )
            )
            after.append(
                sql.SQL("ALTER INDEX {} RENAME TO {}").format(
                    sql.Identifier(rel.schema, temp_name), sql.Identifier(name)
                )
            )
        if comment is not None:
            comments.append(_comment("INDEX {}", comment, sql.Identifier(rel.schema, name)))
    cur.execute(_CHECKS, rel.ids)
    for name, condef, comment in cur.fetchall():
        cur.execute(
            sql.SQL("ALTER TABLE {} ADD CONSTRAINT {} {}").format(shadow, sql.Identifier(name), sql.SQL(condef))
        )
        if comment is not None:
            comments.append(_comment("CONSTRAINT {} ON {}", comment, sql.Identifier(name), target))
    cur.execute(_COLUMNS, rel.ids)
    for column, target_notnull, shadow_notnull, comment in cur.fetchall():
        if target_notnull != shadow_notnull:
            cur.execute(
                sql.SQL("ALTER TABLE {} ALTER COLUMN {} {} NOT NULL").format(
                    shadow, sql.Identifier(column), sql.SQL("SET" if target_notnull else "DROP")
                )
            )
        if comment is not None:
            comments.append(_comment("COLUMN {}", comment, sql.Identifier(rel.schema, rel.target, column)))
    table_comment = _copy_grants(cur, rel, shadow)
    if table_comment is not None:
        comments.append(_comment("TABLE {}", table_comment, target))
    cur.execute(sql.SQL("ANALYZE {}").format(shadow))  # readers' plans have statistics from the first query

    cur.execute(sql.SQL("SET LOCAL lock_timeout = {}").format(sql.Literal(f"{lock_wait_seconds}s")))
    cur.execute(sql.SQL("LOCK TABLE {} IN ACCESS EXCLUSIVE MODE").format(target))
    cur.execute(sql.SQL("DROP TABLE {}").format(target))  # RESTRICT: a late dependent fails it, target untouched
    cur.execute(sql.SQL("ALTER TABLE {} RENAME TO {}").format(shadow, sql.Identifier(rel.target)))
    for statement in after + comments:
        cur.execute(statement)


def _comment(what: str, text: str, *names: sql.Composable) -> sql.Composable:
    return sql.SQL("COMMENT ON " + what + " IS {}").format(*names, sql.Literal(text))


def _copy_grants(cur: psycopg.Cursor[Any], rel: Relations, shadow: sql.Identifier) -> str | None:
    """The shadow's grants become the target's (all made by the owner, as ``rename_obstacles`` requires);
    returns the target's comment."""
    cur.execute(_ACL, rel.ids)
    has_acl, comment, shadow_grantees = cur.fetchone()  # type: ignore[misc]
    if not has_acl:  # the owner's implicit privileges, on both (the shadow has no grants of its own)
        return comment
    for grantee in shadow_grantees or [None]:  # None: the owner, whose privileges are implicit
        cur.execute(sql.SQL("REVOKE ALL ON TABLE {} FROM {}").format(shadow, _role(grantee)))
    cur.execute(_GRANTS, rel.ids)
    for grantee, privilege, grantable in cur.fetchall():
        if privilege not in _TABLE_PRIVILEGES:
            raise ValueError(f"unexpected privilege {privilege!r} on {rel.schema}.{rel.target}")
        cur.execute(
            sql.SQL("GRANT {} ON TABLE {} TO {}{}").format(
                sql.SQL(privilege), shadow, _role(grantee), sql.SQL(" WITH GRANT OPTION" if grantable else "")
            )
        )
    return comment


def _role(name: str | None) -> sql.Composable:
    if name is None:
        return sql.SQL("CURRENT_USER")
    return sql.SQL("PUBLIC") if name == "" else sql.Identifier(name)
