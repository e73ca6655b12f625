package product

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"sync"

	"github.com/lib/pq"
)

// ErrNotFound is returned when no product has the requested id.
var ErrNotFound = errors.New("product not found")

// ErrPreconditionFailed is returned when a write's [Precondition] does not
// hold: the product exists but at another version.
var ErrPreconditionFailed = errors.New("product version does not match If-Match")

// VersionError is the ErrPreconditionFailed of a product that exists at
// another version; errors.Is(err, ErrPreconditionFailed) holds for it.
type VersionError struct {
	Current int64 // the product's version when the write was refused
}

func (e *VersionError) Error() string {
	return fmt.Sprintf("product is at version %d: %v", e.Current, ErrPreconditionFailed)
}

// Unwrap returns ErrPreconditionFailed.
func (e *VersionError) Unwrap() error { return ErrPreconditionFailed }

// Record is a stored product: its id, its version and its JSON as rendered by
// the database's product_json, ready to be written to a response as is.
type Record struct {
	ID      int64
	Version int64
	JSON    []byte
}

// Precondition guards a write, as If-Match does. The zero value always holds.
type Precondition struct {
	// Versions, when not empty, are the versions the write may apply to.
	Versions []int64
}

// None reports whether p puts no condition on the write.
func (p Precondition) None() bool { return len(p.Versions) == 0 }

// Holds reports whether a product at version v satisfies p.
func (p Precondition) Holds(v int64) bool {
	if p.None() {
		return true
	}
	for _, want := range p.Versions {
		if want == v {
			return true
		}
	}
	return false
}

// versions returns the condition as a query parameter: NULL for none.
func (p Precondition) versions() any {
	if p.None() {
		return nil
	}
	return pq.Array(p.Versions)
}

// Store reads and writes products in PostgreSQL. Every write goes through the
// table's triggers, which bump the version and append to the change log in
// the same transaction. A Store is safe for concurrent use.
//
// Its statements are prepared on first use and kept: planning the UPDATE of
// a PUT costs PostgreSQL about 0.4 ms, as much again as running it (pgbench
// with -M prepared against -M extended, BENCHMARKS.md).
type Store struct {
	db *sql.DB

	mu     sync.Mutex           // guards stmts and closed
	stmts  map[string]*sql.Stmt // by query text; database/sql re-prepares per connection
	closed bool
}

// errStoreClosed is what a Store answers once closed (a request that
// outlived the server's shutdown, say): it prepares nothing more.
var errStoreClosed = errors.New("product store closed")

// NewStore returns a Store on db, whose schema must be migrated. Close
// releases its prepared statements.
func NewStore(db *sql.DB) *Store { return &Store{db: db, stmts: make(map[string]*sql.Stmt)} }

// Close releases the prepared statements. A Store prepares nothing after
// it: a single-row query runs unprepared, the other calls fail.
func (s *Store) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.closed = true
	var errs []error
	for query, stmt := range s.stmts {
		errs = append(errs, stmt.Close())
		delete(s.stmts, query)
	}
	return errors.Join(errs...)
}

// stmt returns query prepared, preparing it on first use. A failed prepare
// (the database is down, say) is not remembered: the next call tries again.
// The prepare runs outside the lock: it waits on the database (planning
// needs the table's lock), and other callers must keep their own
// deadlines rather than queue behind it; of two that prepare at once, the
// first to finish is kept.
func (s *Store) stmt(ctx context.Context, query string) (*sql.Stmt, error) {
	s.mu.Lock()
	stmt, ok := s.stmts[query]
	closed := s.closed
	s.mu.Unlock()
	if closed {
		return nil, errStoreClosed
	}
	if ok {
		return stmt, nil
	}
	stmt, err := s.db.PrepareContext(ctx, query)
	if err != nil {
		return nil, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed { // closed while preparing: keep nothing
		_ = stmt.Close()
		return nil, errStoreClosed
	}
	if kept, ok := s.stmts[query]; ok {
		_ = stmt.Close()
		return kept, nil
	}
	s.stmts[query] = stmt
	return stmt, nil
}

// queryRow runs a prepared single-row query.
func (s *Store) queryRow(ctx context.Context, query string, args ...any) *sql.Row {
	stmt, err := s.stmt(ctx, query)
	if err != nil {
		// QueryRowContext on a closed DB returns a Row carrying the error; a
		// failed prepare must be reported the same way, through Scan.
		return s.db.QueryRowContext(ctx, query, args...)
	}
	return stmt.QueryRowContext(ctx, args...)
}

// The statements of the store.
const (
	listQuery = `SELECT product_id, version, product_json(p) FROM products p
		WHERE product_id > $1 ORDER BY product_id LIMIT $2`
	getQuery    = `SELECT version, product_json(p) FROM products p WHERE product_id = $1`
	createQuery = `INSERT INTO products (manufacturer, product_name, price_amount, price_currency, units_available)
		VALUES ($1, $2, $3, $4, $5)
		RETURNING product_id, version, product_json(products)`
	replaceQuery = `UPDATE products SET manufacturer = $2, product_name = $3, price_amount = $4,
		       price_currency = $5, units_available = $6
		WHERE product_id = $1 AND ($7::bigint[] IS NULL OR version = ANY($7::bigint[]))
		RETURNING version, product_json(products)`
	lockQuery = `SELECT manufacturer, product_name, price_amount::text, price_currency, units_available, version
		FROM products WHERE product_id = $1 FOR UPDATE`
	deleteQuery = `DELETE FROM products
		WHERE product_id = $1 AND ($2::bigint[] IS NULL OR version = ANY($2::bigint[]))`
	versionQuery = `SELECT version FROM products WHERE product_id = $1`
)

// MaxListLimit is the largest page [Store.List] returns.
const MaxListLimit = 1000

// List returns up to limit products with ids greater than after, in id order
// (keyset pagination: pass the last id of a page to get the next).
func (s *Store) List(ctx context.Context, after int64, limit int) ([]Record, error) {
	if limit < 1 || limit > MaxListLimit {
		return nil, fmt.Errorf("list products: limit %d out of range 1..%d", limit, MaxListLimit)
	}
	stmt, err := s.stmt(ctx, listQuery)
	if err != nil {
		return nil, fmt.Errorf("list products after %d: %w", after, err)
	}
	rows, err := stmt.QueryContext(ctx, after, limit)
	if err != nil {
		return nil, fmt.Errorf("list products after %d: %w", after, err)
	}
	defer rows.Close()
	records := make([]Record, 0, min(limit, 128))
	for rows.Next() {
		var r Record
		if err := rows.Scan(&r.ID, &r.Version, &r.JSON); err != nil {
			return nil, fmt.Errorf("list products after %d: %w", after, err)
		}
		records = append(records, r)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("list products after %d: %w", after, err)
	}
	return records, nil
}

// Get returns the product with the given id, or ErrNotFound.
func (s *Store) Get(ctx context.Context, id int64) (Record, error) {
	r := Record{ID: id}
	err := s.queryRow(ctx, getQuery, id).Scan(&r.Version, &r.JSON)
	if errors.Is(err, sql.ErrNoRows) {
		return Record{}, fmt.Errorf("get product %d: %w", id, ErrNotFound)
	}
	if err != nil {
		return Record{}, fmt.Errorf("get product %d: %w", id, err)
	}
	return r, nil
}

// Create inserts a product; the database assigns its id (version 1).
func (s *Store) Create(ctx context.Context, f Fields) (Record, error) {
	var r Record
	err := s.queryRow(ctx, createQuery, f.Manufacturer, f.ProductName, f.Price.Amount, f.Price.Currency, f.UnitsAvailable).
		Scan(&r.ID, &r.Version, &r.JSON)
	if err != nil {
		return Record{}, fmt.Errorf("create product: %w", err)
	}
	return r, nil
}

// Replace overwrites every writable field of product id, if it exists
// (ErrNotFound otherwise: Replace never creates) and pre holds
// (ErrPreconditionFailed otherwise).
func (s *Store) Replace(ctx context.Context, id int64, f Fields, pre Precondition) (Record, error) {
	r := Record{ID: id}
	err := s.queryRow(ctx, replaceQuery, id, f.Manufacturer, f.ProductName, f.Price.Amount, f.Price.Currency, f.UnitsAvailable, pre.versions()).
		Scan(&r.Version, &r.JSON)
	if errors.Is(err, sql.ErrNoRows) {
		return Record{}, fmt.Errorf("replace product %d: %w", id, s.whyNoRow(ctx, id))
	}
	if err != nil {
		return Record{}, fmt.Errorf("replace product %d: %w", id, err)
	}
	return r, nil
}

// Patch applies a merge patch to product id under a row lock, so that
// concurrent patches of different fields never undo each other. Errors as
// for Replace.
func (s *Store) Patch(ctx context.Context, id int64, p Patch, pre Precondition) (Record, error) {
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return Record{}, fmt.Errorf("patch product %d: %w", id, err)
	}
	defer tx.Rollback() //nolint:errcheck // a no-op after Commit

	var f Fields
	var version int64
	lock, err := s.stmt(ctx, lockQuery)
	if err != nil {
		return Record{}, fmt.Errorf("patch product %d: %w", id, err)
	}
	update, err := s.stmt(ctx, replaceQuery)
	if err != nil {
		return Record{}, fmt.Errorf("patch product %d: %w", id, err)
	}
	err = tx.StmtContext(ctx, lock).QueryRowContext(ctx, id).
		Scan(&f.Manufacturer, &f.ProductName, &f.Price.Amount, &f.Price.Currency, &f.UnitsAvailable, &version)
	if errors.Is(err, sql.ErrNoRows) {
		return Record{}, fmt.Errorf("patch product %d: %w", id, ErrNotFound)
	}
	if err != nil {
		return Record{}, fmt.Errorf("patch product %d: %w", id, err)
	}
	if !pre.Holds(version) {
		return Record{}, fmt.Errorf("patch product %d: %w", id, &VersionError{Current: version})
	}
	f = p.Apply(f)
	r := Record{ID: id}
	err = tx.StmtContext(ctx, update).QueryRowContext(ctx,
		id, f.Manufacturer, f.ProductName, f.Price.Amount, f.Price.Currency, f.UnitsAvailable, nil).
		Scan(&r.Version, &r.JSON)
	if err != nil {
		return Record{}, fmt.Errorf("patch product %d: %w", id, err)
	}
	if err := tx.Commit(); err != nil {
		return Record{}, fmt.Errorf("patch product %d: commit: %w", id, err)
	}
	return r, nil
}

// Delete removes product id if it exists (ErrNotFound) and pre holds
// (ErrPreconditionFailed).
func (s *Store) Delete(ctx context.Context, id int64, pre Precondition) error {
	stmt, err := s.stmt(ctx, deleteQuery)
	if err != nil {
		return fmt.Errorf("delete product %d: %w", id, err)
	}
	res, err := stmt.ExecContext(ctx, id, pre.versions())
	if err != nil {
		return fmt.Errorf("delete product %d: %w", id, err)
	}
	n, err := res.RowsAffected()
	if err != nil {
		return fmt.Errorf("delete product %d: %w", id, err)
	}
	if n == 0 {
		return fmt.Errorf("delete product %d: %w", id, s.whyNoRow(ctx, id))
	}
	return nil
}

// whyNoRow tells, after a conditional write touched no row, whether the
// product is missing or at another version.
func (s *Store) whyNoRow(ctx context.Context, id int64) error {
	var version int64
	err := s.queryRow(ctx, versionQuery, id).Scan(&version)
	switch {
	case errors.Is(err, sql.ErrNoRows):
		return ErrNotFound
	case err != nil:
		return err
	default:
		return &VersionError{Current: version}
	}
}
