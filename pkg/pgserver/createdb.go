package pgserver

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"log/slog"
	"os"

	"github.com/lib/pq"
)

// CreateDatabase creates the database name on the server of adminDSN (a
// connection as a user allowed to create databases) unless it exists. Two
// callers racing to create the same database both succeed.
func CreateDatabase(ctx context.Context, adminDSN, name string) error {
	db, err := sql.Open("postgres", adminDSN)
	if err != nil {
		return err
	}
	defer db.Close()
	var exists bool
	if err := db.QueryRowContext(ctx, `SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)`, name).Scan(&exists); err != nil {
		return fmt.Errorf("look for database %s: %w", name, err)
	}
	if exists {
		return nil
	}
	_, err = db.ExecContext(ctx, "CREATE DATABASE "+pq.QuoteIdentifier(name))
	var pqErr *pq.Error
	if errors.As(err, &pqErr) && (pqErr.Code == "42P04" || pqErr.Code == "23505") { // created meanwhile
		return nil
	}
	if err != nil {
		return fmt.Errorf("create database %s: %w", name, err)
	}
	return nil
}

// ResolveDatabase is [Resolve], then the database name made on the server
// it picked ([CreateDatabase]); it returns that database's DSN and, as
// Resolve, the private cluster it started if it took that path. DATABASE_URL
// is returned as is: it names its database already. When the database
// cannot be made, a cluster Resolve started is stopped again (one it found
// running is left as it was), so that a failed start leaves no server
// behind.
func ResolveDatabase(ctx context.Context, privateDir, name string, logger *slog.Logger) (dsn string, cluster *Cluster, err error) {
	return resolveDatabase(ctx, privateDir, name, logger, os.Getenv, LocalDSN)
}

// resolveDatabase is ResolveDatabase with resolve's replaceable parts.
func resolveDatabase(ctx context.Context, privateDir, name string, logger *slog.Logger,
	getenv func(string) string, localDSN string) (string, *Cluster, error) {
	adminDSN, cluster, err := resolve(ctx, privateDir, logger, getenv, localDSN)
	if err != nil {
		return "", nil, err
	}
	if getenv("DATABASE_URL") != "" {
		return adminDSN, nil, nil
	}
	dsn, err := WithDatabase(adminDSN, name)
	if err == nil {
		err = CreateDatabase(ctx, adminDSN, name)
	}
	if err != nil {
		if cluster != nil && !cluster.Reused() {
			if stopErr := cluster.Stop(context.WithoutCancel(ctx)); stopErr != nil {
				err = errors.Join(err, fmt.Errorf("stop the private cluster again: %w", stopErr))
			}
		}
		return "", nil, err
	}
	return dsn, cluster, nil
}
