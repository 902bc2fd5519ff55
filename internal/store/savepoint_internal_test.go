package store

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"
)

// A statement that fails in the pipeline ahead of a SAVEPOINT (a RELEASE, the
// plan mode or a statement timeout cancelled there) makes PostgreSQL skip the
// SAVEPOINT. The savepoint's failure must then leave the transaction aborted:
// a ROLLBACK TO of a savepoint of the same name made earlier would undo the
// work of the siblings written since, and the transaction would commit
// without it. Each savepoint has a name of its own, and a savepoint never made
// is never rolled back to.
func TestASavepointNeverMadeIsNeverRolledBackTo(t *testing.T) {
	ctx := context.Background()
	// A table of its own in the server's postgres database (testenv, which
	// gives a test a database, imports this package).
	admin := adminURL()
	s, err := Open(ctx, Config{URL: admin, MaxConns: 2})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	table := fmt.Sprintf("public.syncflow_siblings_%d", time.Now().UnixNano())
	if _, err := s.pool.Exec(ctx, `CREATE TABLE `+table+` (v text)`); err != nil {
		t.Fatal(err)
	}
	defer func() { _, _ = s.pool.Exec(context.Background(), `DROP TABLE `+table) }()
	var errB, errC error
	err = s.inTx(ctx, func(tx *tx) error {
		// Sibling A fails after its statement ran: rolled back to its savepoint.
		_ = tx.Savepoint(ctx, func() error {
			if _, err := tx.exec(ctx, `INSERT INTO `+table+` VALUES ('a')`); err != nil {
				return err
			}
			return errors.New("rows to blame")
		})
		// Sibling B commits with the transaction.
		errB = tx.Savepoint(ctx, func() error {
			_, err := tx.exec(ctx, `INSERT INTO `+table+` VALUES ('b')`)
			return err
		})
		// A control statement fails ahead of sibling C's SAVEPOINT.
		tx.later(pendingStmt{what: "RELEASE SAVEPOINT", sql: "SELECT 1/0", control: true})
		errC = tx.Savepoint(ctx, func() error {
			_, err := tx.exec(ctx, `INSERT INTO `+table+` VALUES ('c')`)
			return err
		})
		return nil // the caller isolated C and goes on
	})
	if errB != nil || errC == nil {
		t.Fatalf("sibling B: %v, sibling C: %v; want B written and C failed", errB, errC)
	}
	if err == nil {
		t.Errorf("the transaction committed after a savepoint that was never made failed")
	}
	var n int
	if err := s.pool.QueryRow(ctx, `SELECT count(*) FROM `+table).Scan(&n); err != nil {
		t.Fatal(err)
	}
	if n != 0 {
		t.Errorf("%d rows committed, want none: the transaction was aborted", n)
	}
}
