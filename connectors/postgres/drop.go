package postgres

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
)

// Drop removes the pipeline's replication slot and publication (for the
// plume command that retires or resets a pipeline). A slot still in use by
// a running walsender is waited for up to 15 seconds (a stopped pipeline's
// walsender exits shortly after its client), then Drop fails naming the
// process. Missing objects are not an error.
func Drop(ctx context.Context, cfg Config) error {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return err
	}
	c := connector{dsn: cfg.DSN, tls: cfg.TLS, attempts: 3}
	conn, err := c.connect(ctx)
	if err != nil {
		return err
	}
	defer conn.Close(context.Background())

	deadline := time.Now().Add(15 * time.Second)
	for {
		var pid *int32
		err := conn.QueryRow(ctx, `SELECT active_pid FROM pg_catalog.pg_replication_slots WHERE slot_name = $1`, cfg.Slot).Scan(&pid)
		if errors.Is(err, pgx.ErrNoRows) {
			break
		}
		if err != nil {
			return fmt.Errorf("postgres: reading replication slot %q: %w", cfg.Slot, err)
		}
		if pid == nil {
			_, err = conn.Exec(ctx, `SELECT pg_drop_replication_slot($1)`, cfg.Slot)
			if err == nil {
				break
			}
			// Raced with a walsender acquiring it: retry below.
		}
		if time.Now().After(deadline) {
			if pid != nil {
				return fmt.Errorf("postgres: replication slot %q is in use by process %d; stop the pipeline first", cfg.Slot, *pid)
			}
			return fmt.Errorf("postgres: dropping replication slot %q: %w", cfg.Slot, err)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
	}
	if _, err := conn.Exec(ctx, "DROP PUBLICATION IF EXISTS "+pgx.Identifier{cfg.Publication}.Sanitize()); err != nil {
		return fmt.Errorf("postgres: dropping publication %q: %w", cfg.Publication, err)
	}
	return nil
}
