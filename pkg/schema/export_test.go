package schema

import "context"

// DownTo rolls the schema back to version, for tests of the Down migrations.
func (m *Migrator) DownTo(ctx context.Context, version int64) (int, error) {
	results, err := m.provider.DownTo(ctx, version)
	return len(results), err
}
