package store

import (
	"bytes"
	"context"
	"fmt"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5/pgtype"
)

func sizedMap() *pgtype.Map {
	m := pgtype.NewMap()
	m.TryWrapEncodePlanFuncs = append([]pgtype.TryWrapEncodePlanFunc{sizedArrays}, m.TryWrapEncodePlanFuncs...)
	return m
}

// The arrays are encoded to the very bytes the driver writes without the
// wrapper, in both formats and for each array type SyncFlow's statements take
// them as; nil is NULL, a nil element a NULL element.
func TestSizedArraysEncodeAsTheDriverDoes(t *testing.T) {
	long := strings.Repeat("é\"\\,{} x", 200)
	values := []any{
		[]string(nil), []string{}, []string{""}, []string{"5:SITE1", "11:PART-000001", long, "NULL", "a b"},
		[][]byte(nil), [][]byte{}, [][]byte{nil}, [][]byte{[]byte("0123456789abcdef"), nil, []byte(`{"k":"v"}`), []byte(long)},
	}
	oids := map[string][]uint32{
		"[]string": {pgtype.TextArrayOID, pgtype.VarcharArrayOID},
		"[][]byte": {pgtype.ByteaArrayOID, pgtype.JSONBArrayOID, pgtype.JSONArrayOID},
	}
	plain, sized := pgtype.NewMap(), sizedMap()
	for _, v := range values {
		for _, oid := range oids[fmt.Sprintf("%T", v)] {
			for _, format := range []int16{pgtype.BinaryFormatCode, pgtype.TextFormatCode} {
				want, werr := plain.Encode(oid, format, v, []byte("before"))
				got, gerr := sized.Encode(oid, format, v, []byte("before"))
				if (werr == nil) != (gerr == nil) || !bytes.Equal(got, want) || (got == nil) != (want == nil) {
					t.Errorf("%#v as OID %d, format %d: %q (%v), want %q (%v)", v, oid, format, got, gerr, want, werr)
				}
			}
		}
	}
}

// The store's connections encode through the wrapper, and the server reads
// what they send as the same arrays.
func TestSizedArraysRoundTrip(t *testing.T) {
	ctx := context.Background()
	admin := adminURL()
	s, err := Open(ctx, Config{URL: admin, MaxConns: 1})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	var texts, hashes string
	var nullTexts, nullHashes bool
	err = s.pool.QueryRow(ctx, `SELECT $1::text[]::text, $2::bytea[]::text, $3::text[] IS NULL, $4::bytea[] IS NULL`,
		[]string{"a", "", `q"b`}, [][]byte{{0xde, 0xad}, nil}, []string(nil), [][]byte(nil)).Scan(&texts, &hashes, &nullTexts, &nullHashes)
	if err != nil {
		t.Fatal(err)
	}
	if texts != `{a,"","q\"b"}` || hashes != `{"\\xdead",NULL}` || !nullTexts || !nullHashes {
		t.Errorf("the server read %s, %s, %v, %v", texts, hashes, nullTexts, nullHashes)
	}
	conn, err := s.pool.Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Release()
	if f := conn.Conn().TypeMap().TryWrapEncodePlanFuncs; len(f) == 0 || fmt.Sprint(f[0]) != fmt.Sprint(pgtype.TryWrapEncodePlanFunc(sizedArrays)) {
		t.Error("the store's connections do not encode arrays through sizedArrays")
	}
}

// BenchmarkArrayEncoding encodes a batch's 500 keys, as the driver does and
// through sizedArrays.
func BenchmarkArrayEncoding(b *testing.B) {
	keys := make([]string, 500)
	for i := range keys {
		keys[i] = fmt.Sprintf("5:SITE111:PART-%06d", i)
	}
	for name, m := range map[string]*pgtype.Map{"driver": pgtype.NewMap(), "sizedArrays": sizedMap()} {
		b.Run(name, func(b *testing.B) {
			for b.Loop() {
				if _, err := m.Encode(pgtype.TextArrayOID, pgtype.BinaryFormatCode, keys, make([]byte, 0, 256)); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
