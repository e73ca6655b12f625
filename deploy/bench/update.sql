-- pgbench script of the bridge's write-path benchmark (BenchmarkBridgeWritePath
-- in bridge/bench_test.go): one UPDATE of a random product per transaction,
-- over the 1,000 products the benchmark seeds (ids 1 to 1000). Every UPDATE
-- fires the change-log trigger unless the benchmark disabled it.
--
-- By hand, on a database with 1,000 products:
--   pgbench -n -M prepared -c 16 -j 2 -T 10 -f deploy/bench/update.sql "$DATABASE_URL"
\set id random(1, 1000)
\set units random(0, 99)
UPDATE products SET units_available = :units WHERE product_id = :id;
