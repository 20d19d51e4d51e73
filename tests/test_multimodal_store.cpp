// shoal::multimodal_store: cross-modal search through a fitted projection, the adjoint and mirror routes
// against brute force, paired ids, late fusion, encoder versions switched under concurrent searches,
// save/open, bad input.

#include <malloc.h>
#include <signal.h>
#include <sys/resource.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <fstream>
#include <numeric>
#include <thread>

#include "allocation_cap.hpp"
#include "shoal/eval/eval.hpp"
#include "shoal/index/flat.hpp"
#include "shoal/io/format.hpp"
#include "shoal/multimodal/store.hpp"
#include "test_support.hpp"

namespace shoal {
namespace {

using test::fails_with;
using test::require_identical;
using test::scratch_dir;

/// rows x cols standard normal values.
matrix<float> normal_matrix(std::size_t rows, std::size_t cols, std::uint64_t seed) {
  matrix<float> m(rows, cols);
  splitmix64 rng(seed);
  for (float& v : m.values) v = rng.normal();
  return m;
}

/// A random linear map in_dim → out_dim with weights N(0, 1/in_dim), and a N(0, 1) bias when asked.
projection random_map(std::size_t in_dim, std::size_t out_dim, std::uint64_t seed, bool bias = false) {
  matrix<float> w = normal_matrix(out_dim, in_dim, seed);
  for (float& v : w.values) v /= std::sqrt(static_cast<float>(in_dim));
  const matrix<float> b = normal_matrix(1, out_dim, seed + 1);
  return {in_dim, out_dim, std::vector<float>(w.values.begin(), w.values.end()),
          bias ? std::vector<float>(b.values.begin(), b.values.end()) : std::vector<float>{}};
}

/// A random dim x dim orthogonal map (QR by modified Gram–Schmidt, twice), with an optional bias.
projection random_rotation(std::size_t dim, std::uint64_t seed, bool bias = false) {
  matrix<float> q = normal_matrix(dim, dim, seed);
  for (int pass = 0; pass < 2; ++pass)
    for (std::size_t i = 0; i < dim; ++i) {
      float* r = q.row(i);
      for (std::size_t p = 0; p < i; ++p) {
        const float dot = inner_product(r, q.row(p), dim);
        for (std::size_t j = 0; j < dim; ++j) r[j] -= dot * q.row(p)[j];
      }
      const float norm = std::sqrt(inner_product(r, r, dim));
      for (std::size_t j = 0; j < dim; ++j) r[j] /= norm;
    }
  const matrix<float> b = normal_matrix(1, dim, seed + 1);
  return {dim, dim, std::vector<float>(q.values.begin(), q.values.end()),
          bias ? std::vector<float>(b.values.begin(), b.values.end()) : std::vector<float>{}};
}

/// `encoder` applied to `latent`, plus `noise` times a standard normal per component.
matrix<float> encode(const projection& encoder, const matrix<float>& latent, float noise, std::uint64_t seed) {
  matrix<float> out = encoder.apply(latent.view());
  splitmix64 rng(seed);
  for (float& v : out.values) v += noise * rng.normal();
  return out;
}

modality_options modality(std::size_t dim, metric m, std::string spec = "Flat", bool native = false) {
  modality_options o;
  o.collection.dim = dim;
  o.collection.metric = m;
  o.collection.index = std::move(spec);
  o.native = native;
  return o;
}

std::vector<vector_id> iota_ids(std::size_t n, vector_id first = 0) {
  std::vector<vector_id> ids(n);
  std::iota(ids.begin(), ids.end(), first);
  return ids;
}

/// Fraction of queries q whose expected id `first + q` is among the first k results (once, however often
/// it appears there).
double paired_recall(const neighbors& found, vector_id first, std::size_t k) {
  std::size_t hits = 0;
  for (std::size_t q = 0; q < found.rows(); ++q) {
    const auto row = found.row_ids(q).first(k);
    hits += std::find(row.begin(), row.end(), first + static_cast<vector_id>(q)) != row.end() ? 1 : 0;
  }
  return static_cast<double>(hits) / static_cast<double>(found.rows());
}

/// Two modalities encoded by different random linear "encoders" from the same latent vectors.
struct two_encoders {
  static constexpr std::size_t latent = 24, image_dim = 64, text_dim = 48;
  matrix<float> image_train, text_train, image_test, text_test;

  two_encoders(std::size_t n_train, std::size_t n_test, float noise) {
    const projection image_encoder = random_map(latent, image_dim, 11);
    const projection text_encoder = random_map(latent, text_dim, 12);
    const matrix<float> z_train = normal_matrix(n_train, latent, 13);
    const matrix<float> z_test = normal_matrix(n_test, latent, 14);
    image_train = encode(image_encoder, z_train, noise, 15);
    text_train = encode(text_encoder, z_train, noise, 16);
    image_test = encode(image_encoder, z_test, noise, 17);
    text_test = encode(text_encoder, z_test, noise, 18);
  }
};

TEST_CASE("multimodal_store: a projection fitted through the store finds the paired vectors across modalities",
          "[multimodal]") {
  constexpr std::size_t n_test = 400, k = 10;
  const two_encoders data(3000, n_test, 0.5f);
  multimodal_store store({.shared_dim = two_encoders::image_dim, .shared_metric = metric::cosine});
  store.add_modality("image", modality(two_encoders::image_dim, metric::cosine, "HNSW16", true));
  modality_options text = modality(two_encoders::text_dim, metric::cosine, "HNSW16");
  text.collection.shards = 3;
  store.add_modality("text", text);
  CHECK(store.info("text").route == shared_route::none);

  const projection fitted = store.fit_projection("text", data.text_train.view(), data.image_train.view());
  CHECK(fitted.in_dim() == two_encoders::text_dim);
  CHECK(fitted.out_dim() == two_encoders::image_dim);
  const modality_info info = store.info("text");
  CHECK(info.route == shared_route::mirror);  // ridge with a bias under cosine: no exact adjoint
  REQUIRE(info.to_shared.has_value());
  CHECK(*info.to_shared == fitted);

  store.add("image", data.image_test.view(), iota_ids(n_test));
  store.add("text", data.text_test.view(), iota_ids(n_test, 1000));
  CHECK(store.size("image") == n_test);
  CHECK(store.size("text") == n_test);
  CHECK(store.info("text").mirror_bytes > 0);
  CHECK(store.memory_bytes() >= store.info("text").memory_bytes + store.info("text").mirror_bytes);

  const neighbors text_to_image = store.search("text", data.text_test.view(), "image", k, {.ef = 128});
  const neighbors image_to_text = store.search("image", data.image_test.view(), "text", k, {.ef = 128});
  const double t2i = paired_recall(text_to_image, 0, k);
  const double i2t = paired_recall(image_to_text, 1000, k);
  CAPTURE(t2i, i2t);
  CHECK(t2i >= 0.9);
  CHECK(i2t >= 0.9);
  // Same modality: its own index, where every stored vector finds itself.
  const double self = paired_recall(store.search("text", data.text_test.view(), "text", 1, {.ef = 64}), 1000, 1);
  CAPTURE(self);
  CHECK(self >= 0.97);  // HNSW built in parallel: a few of 400 may miss themselves at ef 64

  // The indexed search agrees with brute force over the image vectors in the shared space.
  const matrix<float> shared_queries = store.to_shared("text", data.text_test.view());
  const neighbors exact = ground_truth(data.image_test.view(), shared_queries.view(), k, metric::cosine);
  CHECK(recall_at_k(text_to_image, exact, k) >= 0.95);
}

/// `random_rotation(dim, seed)` stretched by a factor 1 + `stretch` along the direction (1, ..., 1):
/// W = (I + stretch · u·uᵀ) · R with u = (1, ..., 1) / √dim, so W·Wᵀ − I = (2·stretch + stretch²) · u·uᵀ
/// spreads its error evenly over every entry.
projection stretched_rotation(std::size_t dim, std::uint64_t seed, float stretch) {
  const projection r = random_rotation(dim, seed);
  std::vector<float> w(r.weights().begin(), r.weights().end());
  std::vector<float> column_sums(dim, 0.0f);
  for (std::size_t i = 0; i < dim; ++i)
    for (std::size_t j = 0; j < dim; ++j) column_sums[j] += w[i * dim + j];
  for (std::size_t i = 0; i < dim; ++i)
    for (std::size_t j = 0; j < dim; ++j) w[i * dim + j] += stretch / static_cast<float>(dim) * column_sums[j];
  return {dim, dim, std::move(w)};
}

TEST_CASE("multimodal_store: adjoint and mirror routes both rank as brute force over projected vectors",
          "[multimodal]") {
  constexpr std::size_t shared_dim = 12, n = 300, nq = 20, k = 8;
  struct variant {
    const char* name;
    metric m;
    projection p;
    shared_route route;
  };
  const std::vector<variant> variants = {
      {"cosine, rotation", metric::cosine, random_rotation(shared_dim, 3), shared_route::adjoint},
      {"cosine, rotation + bias", metric::cosine, random_rotation(shared_dim, 4, true), shared_route::mirror},
      {"cosine, general", metric::cosine, random_map(9, shared_dim, 5, true), shared_route::mirror},
      {"l2, rotation + bias", metric::l2, random_rotation(shared_dim, 6, true), shared_route::adjoint},
      {"l2, general", metric::l2, random_map(shared_dim, shared_dim, 7), shared_route::mirror},
      // Every entry of W·Wᵀ − I below 1e-4 (about 8.3e-5), its norm 1e-3: not a rotation, so a mirror.
      {"l2, a rotation stretched by 0.05%", metric::l2, stretched_rotation(shared_dim, 9, 5e-4f), shared_route::mirror},
      {"inner product, general + bias", metric::inner_product, random_map(9, shared_dim, 8, true),
       shared_route::adjoint},
  };
  for (const variant& v : variants) {
    CAPTURE(v.name);
    multimodal_store store({.shared_dim = shared_dim, .shared_metric = v.m});
    store.add_modality("query", modality(shared_dim, v.m, "Flat", true));
    modality_options target = modality(v.p.in_dim(), v.m);
    target.to_shared = v.p;
    store.add_modality("target", target);
    REQUIRE(store.info("target").route == v.route);
    CHECK((store.info("target").mirror_bytes > 0) == (v.route == shared_route::mirror));

    const matrix<float> vectors = normal_matrix(n, v.p.in_dim(), 21);
    const std::vector<vector_id> ids = iota_ids(n, 500);
    store.add("target", vectors.view(), ids);
    const matrix<float> queries = normal_matrix(nq, shared_dim, 22);
    const neighbors found = store.search("query", queries.view(), "target", k);

    const matrix<float> projected = store.to_shared("target", vectors.view());
    for (std::size_t q = 0; q < nq; ++q) {
      CAPTURE(q);
      const std::vector<scored_id> truth = test::brute_force(projected.view(), ids, queries.row(q), v.m);
      for (std::size_t j = 0; j < k; ++j) {
        CHECK(found.id(q, j) == truth[j].id);
        CHECK(found.distance(q, j) == Approx(truth[j].distance).margin(1e-4).epsilon(1e-4));
      }
    }
  }
}

TEST_CASE("multimodal_store: search_via_pairs maps query-modality neighbours to their linked ids", "[multimodal]") {
  multimodal_store store({.shared_dim = 2, .shared_metric = metric::l2});
  store.add_modality("image", modality(2, metric::l2, "Flat", true));
  store.add_modality("text", modality(2, metric::l2));  // no projection: only paired search reaches images
  const std::vector<float> captions = {0, 0, 1, 0, 3, 0, 4, 0, 8, 0, 2, 0};
  store.add("text", {captions.data(), 6, 2}, iota_ids(6));
  const std::vector<float> images = {50, 50, 60, 60, 70, 70};
  store.add("image", {images.data(), 3, 2}, std::vector<vector_id>{100, 101, 102});
  // Captions 0, 1 and 5 describe image 100; 2, 3 and 5 image 101; 4 image 102 (5 is linked twice).
  store.link("text", std::vector<vector_id>{0, 1, 2, 3, 4, 5, 5},  //
             "image", std::vector<vector_id>{100, 100, 101, 101, 102, 100, 101});
  store.link("image", std::vector<vector_id>{100}, "text", std::vector<vector_id>{0});  // again: kept once
  CHECK(store.link_count("text", "image") == 7);
  CHECK(store.link_count("image", "text") == 7);
  CHECK(store.linked("image", 101, "text") == std::vector<vector_id>{2, 3, 5});
  CHECK(store.linked("text", 5, "image") == std::vector<vector_id>{100, 101});
  CHECK(store.linked("text", 77, "image").empty());

  // Query at x = 2.9: text neighbours 2 (d 0.01), 5 (0.81), 3 (1.21), 1, 0, 4 (26.01) → images 101, then 100
  // through caption 5, then 102 through caption 4.
  const std::vector<float> query = {2.9f, 0};
  const neighbors via = store.search_via_pairs("text", {query.data(), 1, 2}, "image", 3);
  CHECK(via.id(0, 0) == 101);
  CHECK(via.distance(0, 0) == Approx(0.01f));
  CHECK(via.id(0, 1) == 100);
  CHECK(via.distance(0, 1) == Approx(0.81f));
  CHECK(via.id(0, 2) == 102);
  CHECK(via.distance(0, 2) == Approx(26.01f));

  // 20 unlinked captions on the query itself: the first 4·k neighbours reach no image, so the search goes
  // deeper until it has k; a fixed depth of 21 reaches caption 2's image only, and pads the rest.
  matrix<float> unlinked(20, 2);
  for (std::size_t i = 0; i < 20; ++i) unlinked.row(i)[0] = 2.9f;
  store.add("text", unlinked.view(), iota_ids(20, 50));
  const neighbors deeper = store.search_via_pairs("text", {query.data(), 1, 2}, "image", 3);
  CHECK(std::vector<vector_id>(deeper.row_ids(0).begin(), deeper.row_ids(0).end()) ==
        std::vector<vector_id>{101, 100, 102});
  const neighbors shallow = store.search_via_pairs("text", {query.data(), 1, 2}, "image", 2, {}, 21);
  CHECK(shallow.id(0, 0) == 101);
  CHECK(shallow.id(0, 1) == no_id);
  CHECK(shallow.distance(0, 1) == no_distance);

  // The reverse direction, and the filter applies to the query modality's ids.
  const auto not_two = [](vector_id id) { return id != 2; };
  CHECK(store.search_via_pairs("text", {query.data(), 1, 2}, "image", 1, {.filter = not_two}).id(0, 0) == 100);
  const std::vector<float> image_query = {61, 61};
  const neighbors captions_of = store.search_via_pairs("image", {image_query.data(), 1, 2}, "text", 4);
  CHECK(std::vector<vector_id>(captions_of.row_ids(0).begin(), captions_of.row_ids(0).end()) ==
        std::vector<vector_id>{2, 3, 5, 4});  // image neighbours 101 (d 2), then 102 (d 162)

  store.unlink("text", std::vector<vector_id>{5, 9}, "image", std::vector<vector_id>{100, 100});
  CHECK(store.linked("text", 5, "image") == std::vector<vector_id>{101});
  CHECK(store.link_count("image", "text") == 6);
  CHECK(store.search_via_pairs("text", {query.data(), 1, 2}, "image", 3).id(0, 1) == 100);  // via caption 1 now

  // A removed image keeps its links (until unlink) but is no answer: 100 goes, 102 moves up.
  store.remove("image", std::vector<vector_id>{100});
  const neighbors after_remove = store.search_via_pairs("text", {query.data(), 1, 2}, "image", 3);
  CHECK(std::vector<vector_id>(after_remove.row_ids(0).begin(), after_remove.row_ids(0).end()) ==
        std::vector<vector_id>{101, 102, no_id});
}

TEST_CASE("multimodal_store: link and unlink run out of memory without leaving a pair linked one way", "[multimodal]") {
  // link inserted pair after pair, each direction in turn: out of memory part-way left pairs linked in
  // one direction only (a review: text→image 1, image→text 0). Every allocation of a link and an unlink
  // is failed in turn; each leaves the links as they were. The names are too long for std::string's
  // inline buffer, so that looking their tables up allocates too.
  const std::string image = "product-image-embeddings", text = "caption-text-embeddings";
  const auto fresh = [&] {
    multimodal_store store({.shared_dim = 2, .shared_metric = metric::l2});
    store.add_modality(image, modality(2, metric::l2, "Flat", true));
    store.add_modality(text, modality(2, metric::l2));
    store.link(text, std::vector<vector_id>{0, 1}, image, std::vector<vector_id>{100, 100});
    return store;
  };
  const std::vector<vector_id> texts{1, 2, 3, 4, 5, 6, 7, 8}, images{101, 100, 102, 103, 104, 105, 106, 100};
  const auto links_of = [&](const multimodal_store& store) {
    std::vector<std::vector<vector_id>> all;
    for (vector_id t = 0; t < 10; ++t) all.push_back(store.linked(text, t, image));
    for (vector_id i = 100; i < 108; ++i) all.push_back(store.linked(image, i, text));
    return all;
  };
  const auto before = links_of(fresh());
  for (const bool unlinking : {false, true}) {
    std::size_t failed = 0, point = 0;
    for (;; ++point) {
      multimodal_store store = fresh();
      if (unlinking) store.link(text, texts, image, images);
      const auto start = links_of(store);
      bool threw = false, injected = false;
      {
        const test::allocation_failure failure(point);
        try {
          if (unlinking)
            store.unlink(text, texts, image, images);
          else
            store.link(text, texts, image, images);
        } catch (const std::bad_alloc&) {
          threw = true;
        }
        injected = failure.happened();
      }
      if (!injected) break;
      CAPTURE(unlinking, point);
      REQUIRE(threw);
      ++failed;
      CHECK(links_of(store) == start);
      CHECK(store.link_count(text, image) == store.link_count(image, text));
    }
    CAPTURE(unlinking);
    CHECK(failed > 0);
  }
  multimodal_store store = fresh();
  store.link(text, texts, image, images);
  store.unlink(text, texts, image, images);
  CHECK(links_of(store) == before);
}

TEST_CASE("multimodal_store: a remove that runs out of memory leaves no removed id in the mirror", "[multimodal]") {
  // Text (6-d) reaches the shared space through a projection, so its vectors have a projected mirror.
  // The list of ids to remove from the mirror was made after the version's remove: out of memory there
  // left the mirror holding them with nothing recorded to repair it, image queries found them at
  // distance 0, and re-adding one failed as a duplicate (a review).
  const matrix<float> text_rows = make_uniform(11, 6, 5), image_rows = make_uniform(10, 8, 6);
  std::vector<float> w(6 * 8);
  for (std::size_t i = 0; i < w.size(); ++i) w[i] = static_cast<float>((i * 7) % 11) / 11.0f - 0.4f;
  const auto build = [&] {
    multimodal_store store({.shared_dim = 8, .shared_metric = metric::l2});
    store.add_modality("image", modality(8, metric::l2, "Flat", true));
    modality_options text = modality(6, metric::l2);
    text.to_shared = projection(6, 8, w);
    store.add_modality("text", text);
    std::vector<vector_id> ids(10);
    std::iota(ids.begin(), ids.end(), vector_id{0});
    store.add("image", image_rows.view(), ids);
    store.add("text", text_rows.view().slice(0, 10), ids);
    return store;
  };
  const std::vector<vector_id> gone{4, 5};
  std::size_t removed = 0, point = 0;
  for (;; ++point) {
    multimodal_store store = build();
    bool injected = false;
    {
      const test::allocation_failure failure(point, /*every_thread=*/true);
      try {
        store.remove("text", gone);
      } catch (const std::bad_alloc&) {
      }
      injected = failure.happened();
    }
    if (!injected) break;
    if (store.contains("text", 4)) continue;  // the version's remove did not go through
    CAPTURE(point);
    ++removed;
    store.add("text", text_rows.view().slice(10, 1), std::vector<vector_id>{200});  // repairs a recorded miss
    const matrix<float> queries = store.to_shared("text", text_rows.view().slice(4, 2));
    const neighbors hit = store.search("image", queries.view(), "text", 1);
    CHECK(hit.id(0, 0) != 4);
    CHECK(hit.id(1, 0) != 5);
    store.add("text", text_rows.view().slice(4, 1), std::vector<vector_id>{4});
    CHECK(store.contains("text", 4));
  }
  CHECK(removed > 0);
}

TEST_CASE("multimodal_store: search_via_pairs breaks ties at its depth by target id", "[multimodal]") {
  // Ten identical captions, caption i linked to image 99 − i: every image ties at distance 0, so the
  // answer for k = 1 is image 90. The first 4·k = 4 neighbours (captions 0-3) reached images 99-96, and
  // the search stopped there with 96.
  multimodal_store store({.shared_dim = 2, .shared_metric = metric::l2});
  store.add_modality("image", modality(2, metric::l2, "Flat", true));
  store.add_modality("text", modality(2, metric::l2));
  const matrix<float> captions(10, 2);  // zeros
  store.add("text", captions.view(), iota_ids(10));
  matrix<float> images(10, 2);
  for (std::size_t i = 0; i < 10; ++i) images.row(i)[0] = 10.0f + static_cast<float>(i);
  store.add("image", images.view(), iota_ids(10, 90));
  std::vector<vector_id> to(10);
  for (std::size_t i = 0; i < 10; ++i) to[i] = 99 - static_cast<vector_id>(i);
  store.link("text", iota_ids(10), "image", to);
  const std::vector<float> query = {0, 0};
  const neighbors one = store.search_via_pairs("text", {query.data(), 1, 2}, "image", 1);
  CHECK(one.id(0, 0) == 90);
  const neighbors three = store.search_via_pairs("text", {query.data(), 1, 2}, "image", 3);
  CHECK(std::vector<vector_id>(three.row_ids(0).begin(), three.row_ids(0).end()) == std::vector<vector_id>{90, 91, 92});
}

TEST_CASE("multimodal_store: late fusion of an image and a text query orders a hand-made case", "[multimodal]") {
  multimodal_store store({.shared_dim = 2, .shared_metric = metric::l2});
  store.add_modality("image", modality(2, metric::l2, "Flat", true));
  store.add_modality("text", modality(2, metric::l2, "Flat", true));
  const std::vector<float> images = {0, 0, 10, 0, 5, 0};  // ids 1, 2, 3
  store.add("image", {images.data(), 3, 2}, std::vector<vector_id>{1, 2, 3});
  // Query 0: the image part sits on id 1 (order 1, 3, 2), the text part at x = 6 (order 3, 2, 1).
  // Query 1: the parts swapped, so the image part alone now prefers 3.
  const std::vector<float> image_part = {0, 0, 6, 0};
  const std::vector<float> text_part = {6, 0, 0, 0};
  const auto ids_of = [](const std::vector<fused_id>& f) {
    std::vector<vector_id> out;
    for (const fused_id& x : f) out.push_back(x.id);
    return out;
  };
  std::vector<modal_query> parts = {{"image", {image_part.data(), 2, 2}}, {"text", {text_part.data(), 2, 2}}};

  // RRF: 3 is 2nd and 1st (1/62 + 1/61) ahead of 1 (1/61 + 1/63) and 2 (1/63 + 1/62).
  auto fused = store.search_fused(parts, "image", 3);
  REQUIRE(fused.size() == 2);
  CHECK(ids_of(fused[0]) == std::vector<vector_id>{3, 1, 2});
  CHECK(fused[0][0].score == Approx(1.0 / 62 + 1.0 / 61));
  CHECK(ids_of(fused[1]) == std::vector<vector_id>{3, 1, 2});
  // Weight 0 on the text part: the image part alone decides.
  parts[1].weight = 0;
  fused = store.search_fused(parts, "image", 3);
  CHECK(ids_of(fused[0]) == std::vector<vector_id>{1, 3, 2});
  CHECK(ids_of(fused[1]) == std::vector<vector_id>{3, 2, 1});
  parts[1].weight = 1;
  // Weighted min-max scores, query 0: 1 → 1 + 0, 3 → 0.75 + 1, 2 → 0 + 20/35.
  fused = store.search_fused(parts, "image", 3, {.rule = fusion_rule::weighted_score});
  CHECK(ids_of(fused[0]) == std::vector<vector_id>{3, 1, 2});
  CHECK(fused[0][0].score == Approx(1.75));
  CHECK(fused[0][2].score == Approx(20.0 / 35.0));
  // Intersection of the top 2 of each part: {1, 3} ∩ {3, 2}.
  fused = store.search_fused(parts, "image", 3, {.rule = fusion_rule::intersection, .candidates = 2});
  CHECK(ids_of(fused[0]) == std::vector<vector_id>{3});
  CHECK(fused[0][0].score == Approx(-3.0));
  // A k or a depth far above the 3 stored images ("all"): the same rankings, without the memory such
  // deep lists would take (2^42 candidates per part; the lists stop at what the target holds).
  CHECK(ids_of(store.search_fused(parts, "image", std::size_t{1} << 40)[0]) == std::vector<vector_id>{3, 1, 2});
  CHECK(ids_of(store.search_fused(parts, "image", 3, {.candidates = std::size_t{1} << 40})[0]) ==
        std::vector<vector_id>{3, 1, 2});

  const std::vector<float> one_row = {0, 0};
  const std::vector<modal_query> uneven = {{"image", {image_part.data(), 2, 2}}, {"text", {one_row.data(), 1, 2}}};
  CHECK_THROWS_MATCHES(store.search_fused(uneven, "image", 3), shoal::error,
                       fails_with(errc::invalid_argument, "has 1 queries"));
  CHECK_THROWS_MATCHES(store.search_fused({}, "image", 3), shoal::error,
                       fails_with(errc::invalid_argument, "no query"));
  CHECK_THROWS_MATCHES(store.search_fused(parts, "sound", 3), shoal::error, fails_with(errc::not_found, "'sound'"));
  // Bad fusion options are refused whether or not there are query rows to fuse.
  const std::vector<modal_query> no_rows = {{"image", {image_part.data(), 0, 2}}, {"text", {text_part.data(), 0, 2}}};
  CHECK(store.search_fused(no_rows, "image", 3).empty());
  for (const std::vector<modal_query>& q : {parts, no_rows}) {
    CAPTURE(q[0].vectors.rows);
    std::vector<modal_query> negative = q;
    negative[1].weight = -1;
    CHECK_THROWS_MATCHES(store.search_fused(negative, "image", 3), shoal::error,
                         fails_with(errc::invalid_argument, "search_fused: part 'text' has weight -1"));
    CHECK_THROWS_MATCHES(store.search_fused(q, "image", 3, {.rrf_k = std::nan("")}), shoal::error,
                         fails_with(errc::invalid_argument, "rrf_k must be finite"));
    CHECK_THROWS_MATCHES(store.search_fused(q, "image", 3, {.rule = static_cast<fusion_rule>(7)}), shoal::error,
                         fails_with(errc::invalid_argument, "unknown fusion rule 7"));
    CHECK_THROWS_MATCHES(
        store.search_fused(q, "image", 3,
                           {.rule = fusion_rule::weighted_score, .normalization = static_cast<score_normalization>(9)}),
        shoal::error, fails_with(errc::invalid_argument, "unknown score normalization 9"));
    CHECK_THROWS_MATCHES(store.search_fused(q, "image", 0), shoal::error, fails_with(errc::invalid_argument, "k must"));
  }
}

TEST_CASE("multimodal_store: encoder versions switch atomically under concurrent searches",
          "[multimodal][concurrency]") {
  constexpr std::size_t dim = 16, v2_dim = 24, n = 600, nq = 16;
  constexpr vector_id v2_base = 1'000'000;
  multimodal_store store({.shared_dim = dim, .shared_metric = metric::cosine});
  store.add_modality("image", modality(dim, metric::cosine, "HNSW16", true), "clip-v1");
  store.add_modality("text", modality(dim, metric::cosine, "Flat", true));
  const matrix<float> v1_vectors = normal_matrix(n, dim, 31);
  store.add("image", v1_vectors.view(), iota_ids(n));
  const matrix<float> queries = normal_matrix(nq, dim, 32);
  const matrix<float> v2_vectors = normal_matrix(n, v2_dim, 33);
  modality_options v2 = modality(v2_dim, metric::cosine, "HNSW16");
  v2.to_shared = random_map(v2_dim, dim, 34, true);  // a mirror

  std::atomic<bool> stop{false}, failed{false};
  std::atomic<std::size_t> saw_v1{0}, saw_v2{0};
  std::vector<std::thread> searchers;
  for (int t = 0; t < 2; ++t)
    searchers.emplace_back([&, t] {
      try {
        for (std::size_t round = 0; !stop.load() || round < 20; ++round) {
          const matrix_view<const float> q = queries.view().slice((round + static_cast<std::size_t>(t)) % nq, 1);
          const neighbors r = store.search("text", q, "image", 10);
          // Every row comes wholly from one version.
          const bool first_v2 = r.id(0, 0) >= v2_base;
          for (const vector_id id : r.row_ids(0))
            if (id == no_id || (id >= v2_base) != first_v2) failed = true;
          (first_v2 ? saw_v2 : saw_v1).fetch_add(1);
        }
      } catch (...) {
        failed = true;
      }
    });
  for (int round = 0; round < 3; ++round) {
    store.add_version("image", "clip-v2", v2);  // built while queries run on clip-v1
    for (std::size_t first = 0; first < n; first += 200)
      store.add("image", v2_vectors.view().slice(first, 200), iota_ids(200, v2_base + first), "clip-v2");
    CHECK(store.active_version("image") == "clip-v1");
    store.activate("image", "clip-v2");
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
    store.activate("image", "clip-v1");
    store.drop_version("image", "clip-v2");
  }
  store.add_version("image", "clip-v2", v2);
  store.add("image", v2_vectors.view(), iota_ids(n, v2_base), "clip-v2");
  store.activate("image", "clip-v2");
  store.drop_version("image", "clip-v1");  // searches still running on it finish on it
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  while (saw_v2.load() == 0 && !failed.load() && std::chrono::steady_clock::now() < deadline) std::this_thread::yield();
  stop = true;
  for (std::thread& t : searchers) t.join();
  CHECK_FALSE(failed.load());
  CHECK(saw_v1.load() > 0);
  CHECK(saw_v2.load() > 0);
  CHECK(store.versions("image") == std::vector<std::string>{"clip-v2"});
  CHECK(store.info("image").route == shared_route::mirror);
  CHECK(store.search("text", queries.view(), "image", 5).id(0, 0) >= v2_base);
}

TEST_CASE("multimodal_store: modalities() and memory_bytes() read a whole catalogue while versions come and go",
          "[multimodal][concurrency]") {
  // Each version added and dropped publishes a new catalogue and frees the old one; the readers walked a
  // catalogue nothing held (a heap use after free, or garbage names).
  constexpr std::size_t dim = 4;
  multimodal_store store({.shared_dim = dim, .shared_metric = metric::l2});
  const modality_options options = modality(dim, metric::l2, "Flat", true);
  store.add_modality("image", options);
  store.add_modality("text", options);
  std::atomic<bool> stop{false}, failed{false};
  std::thread admin([&] {
    for (int round = 0; !stop.load(); ++round) {
      const std::string version = std::to_string(round);
      store.add_version("image", version, options);
      store.drop_version("image", version);
    }
  });
  const std::vector<std::string> names{"image", "text"};
  for (int i = 0; i < 20'000 && !failed.load(); ++i) {
    if (store.modalities() != names) failed = true;
    if (store.memory_bytes() > (std::size_t{1} << 30)) failed = true;
  }
  stop = true;
  admin.join();
  CHECK_FALSE(failed.load());
}

TEST_CASE("multimodal_store: save/open round-trips modalities, versions, projections and links", "[multimodal][io]") {
  constexpr std::size_t n = 500, nq = 30, k = 10;
  const two_encoders data(1500, n, 0.3f);
  const scratch_dir dir("shoal-mm-store");
  multimodal_store store({.shared_dim = two_encoders::image_dim, .shared_metric = metric::cosine});
  modality_options image = modality(two_encoders::image_dim, metric::cosine, "HNSW16", true);
  image.collection.shards = 2;
  image.collection.policy = sharding::semantic;
  store.add_modality("image", image);
  store.train("image", data.image_train.view());
  store.add_modality("text", modality(two_encoders::text_dim, metric::cosine, "HNSW16"));
  store.fit_projection("text", data.text_train.view(), data.image_train.view(), {.lambda = 0.1f});
  // A rotated copy of the image space, aligned by Procrustes without a bias: the adjoint route.
  const projection rotation = random_rotation(two_encoders::image_dim, 41);
  const matrix<float> rotated_train = rotation.apply(data.image_train.view());
  store.add_modality("rotated", modality(two_encoders::image_dim, metric::cosine, "Flat"), "r1");
  store.fit_projection("rotated", rotated_train.view(), data.image_train.view(),
                       {.method = projection_method::procrustes, .fit_bias = false});
  store.add_version("text", "spare", modality(8, metric::l2));

  store.add("image", data.image_test.view(), iota_ids(n));
  store.add("text", data.text_test.view(), iota_ids(n, 10'000));
  store.add("rotated", rotation.apply(data.image_test.view()).view(), iota_ids(n, 20'000));
  const std::vector<vector_id> images = iota_ids(n), captions = iota_ids(n, 10'000);
  store.link("text", captions, "image", images);
  REQUIRE(store.info("rotated").route == shared_route::adjoint);
  REQUIRE(store.info("text").route == shared_route::mirror);

  const matrix_view<const float> text_q = data.text_test.view().slice(0, nq);
  const matrix_view<const float> image_q = data.image_test.view().slice(0, nq);
  const auto results = [&](const multimodal_store& s) {
    std::vector<neighbors> out;
    out.push_back(s.search("text", text_q, "image", k, {.ef = 64}));
    out.push_back(s.search("image", image_q, "text", k, {.ef = 64}));
    out.push_back(s.search("image", image_q, "rotated", k));
    out.push_back(s.search("rotated", rotation.apply(image_q).view(), "text", k, {.ef = 64}));
    out.push_back(s.search_via_pairs("text", text_q, "image", k, {.ef = 64}));
    return out;
  };
  const std::vector<neighbors> before = results(store);
  CHECK(paired_recall(before[2], 20'000, 1) >= 0.99);  // the rotation is recovered
  store.save(dir.path());

  {
    multimodal_store back = multimodal_store::open(dir.path());
    const std::vector<neighbors> after = results(back);
    for (std::size_t i = 0; i < before.size(); ++i) {
      CAPTURE(i);
      require_identical(after[i], before[i]);
    }
    CHECK(back.modalities() == std::vector<std::string>{"image", "rotated", "text"});
    CHECK(back.versions("text") == std::vector<std::string>{"spare", "v1"});
    CHECK(back.active_version("rotated") == "r1");
    CHECK(back.shared_dim() == two_encoders::image_dim);
    CHECK(back.info("text").to_shared == store.info("text").to_shared);
    CHECK(back.info("rotated").route == shared_route::adjoint);
    CHECK(back.info("image").collection.policy == sharding::semantic);
    CHECK(back.info("text", "spare").collection.dim == 8);
    CHECK(back.linked("image", 7, "text") == std::vector<vector_id>{10'007});
    CHECK(back.link_count("text", "image") == n);

    // Writes after open are logged by the collections; a save into the same directory checkpoints.
    const std::vector<float> extra(two_encoders::text_dim, 0.5f);
    back.add("text", {extra.data(), 1, two_encoders::text_dim}, std::vector<vector_id>{99'999});
    back.drop_version("text", "spare");
    back.activate("image", "v1");
    back.save(dir.path());
  }
  CHECK_FALSE(std::filesystem::exists(dir.path() / "text" / "spare"));
  {
    const multimodal_store again = multimodal_store::open(dir.path(), {.mmap = true});
    CHECK(again.contains("text", 99'999));
    CHECK(again.versions("text") == std::vector<std::string>{"v1"});
    require_identical(again.search("text", text_q, "image", k, {.ef = 64}), before[0]);
  }

  // Damage is reported, never served.
  const std::filesystem::path manifest = dir.path() / "MULTIMODAL.shoal";
  std::string bytes;
  {
    std::ifstream in(manifest, std::ios::binary);
    bytes.assign(std::istreambuf_iterator<char>(in), {});
  }
  const auto write_manifest = [&](const std::string& b) {
    std::filesystem::remove(manifest);
    std::ofstream(manifest, std::ios::binary) << b;
  };
  std::string flipped = bytes;
  flipped[40] = static_cast<char>(flipped[40] ^ 0x20);
  write_manifest(flipped);
  CHECK_THROWS_MATCHES(multimodal_store::open(dir.path()), shoal::error, fails_with(errc::corrupt_file, "checksum"));
  write_manifest(bytes.substr(0, 30));
  CHECK_THROWS_MATCHES(multimodal_store::open(dir.path()), shoal::error, fails_with(errc::corrupt_file));
  std::string newer = bytes;
  newer[8] = 9;
  write_manifest(newer);
  CHECK_THROWS_MATCHES(multimodal_store::open(dir.path()), shoal::error, fails_with(errc::unsupported, "newer"));
  // Nor is a newer store overwritten.
  CHECK_THROWS_MATCHES(store.save(dir.path()), shoal::error, fails_with(errc::unsupported, "newer"));
  CHECK_THROWS_MATCHES(multimodal_store::open(dir.path() / "nothing"), shoal::error,
                       fails_with(errc::io_error, "holds no multimodal store"));
  // A shared dimension past what the constructor takes, under a valid checksum: refused as such (it
  // opened where no modality's dimension contradicted it; a review).
  std::string wide = bytes;
  const std::uint64_t too_wide = max_dim + 1;
  std::memcpy(wide.data() + 24, &too_wide, sizeof too_wide);  // the body's first field (docs/format.md)
  const std::uint32_t crc = crc32c(wide.data(), wide.size() - 4);
  std::memcpy(wide.data() + wide.size() - 4, &crc, sizeof crc);
  write_manifest(wide);
  CHECK_THROWS_MATCHES(multimodal_store::open(dir.path()), shoal::error,
                       fails_with(errc::corrupt_file, "invalid shared space"));
}

TEST_CASE("multimodal_store: a manifest whose versions share a directory is refused as corrupt", "[multimodal][io]") {
  // Under a valid checksum. The collections were opened first, and the second failed as its directory
  // being open in another collection (errc::io_error), which blamed another process (a review).
  const scratch_dir dir("shoal-mm-dirs");
  {
    multimodal_store store({.shared_dim = 2, .shared_metric = metric::l2});
    store.add_modality("image", modality(2, metric::l2, "Flat", true), "alpha");
    store.add_version("image", "gamma", modality(2, metric::l2, "Flat", true));
    store.save(dir.path());
  }
  const std::filesystem::path manifest = dir.path() / "MULTIMODAL.shoal";
  std::string bytes;
  {
    std::ifstream in(manifest, std::ios::binary);
    bytes.assign(std::istreambuf_iterator<char>(in), {});
  }
  const std::size_t last = bytes.rfind("gamma");  // version gamma's directory (its name comes before it)
  REQUIRE(last != std::string::npos);
  REQUIRE(bytes.find("gamma") < last);
  bytes.replace(last, 5, "alpha");
  const std::uint32_t crc = crc32c(bytes.data(), bytes.size() - 4);
  std::memcpy(bytes.data() + bytes.size() - 4, &crc, sizeof crc);
  std::filesystem::remove(manifest);
  std::ofstream(manifest, std::ios::binary) << bytes;
  CHECK_THROWS_MATCHES(
      multimodal_store::open(dir.path()), shoal::error,
      fails_with(errc::corrupt_file, "versions 'alpha' and 'gamma' of 'image' name one directory, 'alpha'"));
}

TEST_CASE("multimodal_store: collections made after open are durable once saved into its directory",
          "[multimodal][io]") {
  constexpr std::size_t n = 40;
  const two_encoders data(400, n, 0.2f);
  const scratch_dir dir("shoal-mm-attach");
  constexpr std::size_t image_dim = two_encoders::image_dim, text_dim = two_encoders::text_dim;
  {
    multimodal_store store({.shared_dim = image_dim, .shared_metric = metric::cosine});
    store.add_modality("image", modality(image_dim, metric::cosine, "Flat", true));
    store.add_modality("text", modality(text_dim, metric::cosine));  // no projection yet
    store.save(dir.path());
  }
  const auto first_hits = [](const neighbors& found) {
    std::vector<vector_id> ids;
    for (std::size_t r = 0; r < found.rows(); ++r) ids.push_back(found.id(r, 0));
    return ids;
  };
  std::vector<vector_id> image_hits;
  {
    multimodal_store back = multimodal_store::open(dir.path());
    // A ridge fit under cosine needs a mirror, made now; so are a new version and a new modality.
    back.fit_projection("text", data.text_train.view(), data.image_train.view(), {.lambda = 0.1f});
    REQUIRE(back.info("text").route == shared_route::mirror);
    back.add_version("image", "v2", modality(image_dim, metric::cosine, "Flat", true));
    back.add_modality("audio", modality(8, metric::l2));
    back.save(dir.path());
    // Writes after that save, then a crash (no save): every one of them must survive.
    back.add("text", data.text_test.view(), iota_ids(n, 1000));
    back.add("image", data.image_test.view(), iota_ids(n), "v2");
    const std::vector<float> sound(8, 1.0f);
    back.add("audio", {sound.data(), 1, 8}, std::vector<vector_id>{7});
    image_hits = first_hits(back.search("image", data.image_test.view(), "text", 1));
  }
  {
    multimodal_store back = multimodal_store::open(dir.path());
    CHECK(back.size("text") == n);
    CHECK(back.size("image", "v2") == n);
    CHECK(back.contains("audio", 7));
    // The mirror holds the projected texts too: image queries still reach them.
    CHECK(first_hits(back.search("image", data.image_test.view(), "text", 1)) == image_hits);
  }

  // A crash between the version's log and its mirror's: here the mirror lost text 1003 and gained a
  // stray 555. `open` brings it back in line with the version.
  {
    collection mirror = collection::open(dir.path() / "text" / "v1" / "shared");
    mirror.remove(1003);
    const std::vector<float> stray(image_dim, 1.0f);
    mirror.add({stray.data(), 1, image_dim}, std::vector<vector_id>{555});
  }
  // A repair that cannot be written (a full disk) is an I/O error, not a damaged store (it read as
  // corrupt_file; a review).
  detail::set_save_hook([](std::uint64_t) { throw shoal::error(errc::io_error, "injected: the disk is full"); });
  const auto full = [&] {
    try {
      (void)multimodal_store::open(dir.path());
    } catch (...) {
      detail::set_save_hook(nullptr);
      throw;
    }
    detail::set_save_hook(nullptr);
  };
  REQUIRE_THROWS_MATCHES(full(), shoal::error,
                         fails_with(errc::io_error, "they cannot be brought in line: injected: the disk is full"));
  {
    multimodal_store back = multimodal_store::open(dir.path());
    CHECK(first_hits(back.search("image", data.image_test.view(), "text", 1)) == image_hits);
    const std::vector<float> stray(image_dim, 1.0f);
    CHECK(back.search("image", {stray.data(), 1, image_dim}, "text", 1).id(0, 0) != 555);
    back.remove("text", std::vector<vector_id>{1000});  // version and mirror agree: no error
    CHECK(back.size("text") == n - 1);
  }
  // The other way round, opened read-only (mapped): the version's log holds a text the mirror never got.
  // The mirror, mapped too at first, is opened again writable to take it.
  const matrix_view<const float> late_text = data.text_train.view().slice(0, 1);
  multimodal_store::open(dir.path()).save(dir.path());  // a checkpoint: no log left to replay
  {
    collection own = collection::open(dir.path() / "text" / "v1" / "native");
    own.add(late_text, std::vector<vector_id>{4242});
  }
  {
    multimodal_store mapped = multimodal_store::open(dir.path(), {.mmap = true});
    const neighbors found = mapped.search("image", mapped.to_shared("text", late_text).view(), "text", 1);
    CHECK(found.id(0, 0) == 4242);
    CHECK(found.distance(0, 0) < 1e-5f);
    // Repaired through writable collections, then mapped again: still a reader, shared with others.
    const multimodal_store second = multimodal_store::open(dir.path(), {.mmap = true});
    CHECK(second.contains("text", 4242));
    REQUIRE_THROWS_MATCHES(mapped.add("text", late_text, std::vector<vector_id>{4243}), shoal::error,
                           fails_with(errc::unsupported, "read-only"));
  }
  {
    // Writes not yet saved (no crash: both logs hold them) need no repair: mapped opens replay them in
    // memory and stay readers. Before, each such open took both collections for writing.
    multimodal_store writer = multimodal_store::open(dir.path());
    writer.add("text", data.text_train.view().slice(2, 1), std::vector<vector_id>{4300});
  }
  {
    multimodal_store a = multimodal_store::open(dir.path(), {.mmap = true});
    const multimodal_store b = multimodal_store::open(dir.path(), {.mmap = true});
    CHECK(a.contains("text", 4300));
    CHECK(b.contains("text", 4300));
    REQUIRE_THROWS_MATCHES(a.add("text", late_text, std::vector<vector_id>{4301}), shoal::error,
                           fails_with(errc::unsupported, "read-only"));
  }
  // An upsert cut off between the two logs: the version holds the new vector of text 1001, its mirror the
  // projection of the old one. `open` compares the ids the logs replayed and writes the stale one again,
  // then checkpoints both, so that the next open has nothing to repair.
  const matrix_view<const float> new_text = data.text_train.view().slice(1, 1);
  multimodal_store::open(dir.path()).save(dir.path());
  {
    collection own = collection::open(dir.path() / "text" / "v1" / "native");
    own.upsert(new_text, std::vector<vector_id>{1001});
  }
  {
    const multimodal_store back = multimodal_store::open(dir.path());
    const neighbors found = back.search("image", back.to_shared("text", new_text).view(), "text", 1);
    CHECK(found.id(0, 0) == 1001);
    CHECK(found.distance(0, 0) < 1e-5f);
  }
  CHECK(collection::open(dir.path() / "text" / "v1" / "native").stats().wal_records_replayed == 0);
  CHECK(collection::open(dir.path() / "text" / "v1" / "shared").stats().wal_records_replayed == 0);
  // Writes through the store leave version and mirror in line: `open` replays them and repairs nothing
  // (no checkpoint: the logs are still there for the next open).
  {
    multimodal_store back = multimodal_store::open(dir.path());
    back.upsert("text", data.text_train.view().slice(2, 1), std::vector<vector_id>{1002});
  }
  (void)multimodal_store::open(dir.path());
  CHECK(collection::open(dir.path() / "text" / "v1" / "native").stats().wal_records_replayed == 1);
  CHECK(collection::open(dir.path() / "text" / "v1" / "shared").stats().wal_records_replayed == 1);

  // An opened store saved elsewhere is copied, and keeps logging into its own directory.
  const scratch_dir copy("shoal-mm-attach-copy");
  {
    multimodal_store back = multimodal_store::open(dir.path());
    back.add_modality("late", modality(8, metric::l2));
    back.save(copy.path());
    const std::vector<float> v(8, 2.0f);
    back.add("late", {v.data(), 1, 8}, std::vector<vector_id>{1});
    back.add("audio", {v.data(), 1, 8}, std::vector<vector_id>{8});
  }
  CHECK(multimodal_store::open(copy.path()).size("late") == 0);
  CHECK(multimodal_store::open(dir.path()).contains("audio", 8));
}

/// A store whose "text" modality keeps only codes (IVF-PQ) and has a mirror: its vectors cannot be read back.
multimodal_store code_store(const two_encoders& data) {
  constexpr std::size_t image_dim = two_encoders::image_dim, text_dim = two_encoders::text_dim;
  multimodal_store store({.shared_dim = image_dim, .shared_metric = metric::cosine});
  store.add_modality("image", modality(image_dim, metric::cosine, "Flat", true));
  store.add_modality("text", modality(text_dim, metric::cosine, "IVF4,PQ4"));
  store.fit_projection("text", data.text_train.view(), data.image_train.view(), {.lambda = 0.1f});
  REQUIRE(store.info("text").route == shared_route::mirror);
  store.train("text", data.text_train.view());
  return store;
}

TEST_CASE("multimodal_store: a version that keeps only codes reopens after writes to it and its mirror",
          "[multimodal][io]") {
  // Its upserts cannot be compared with its mirror (no stored vectors to project), so `open` leaves them.
  const two_encoders data(400, 20, 0.2f);
  const scratch_dir dir("shoal-mm-codes");
  code_store(data).save(dir.path());
  {
    multimodal_store back = multimodal_store::open(dir.path());
    back.add("text", data.text_test.view(), iota_ids(20, 100));
    back.upsert("text", data.text_train.view().slice(0, 1), std::vector<vector_id>{105});
  }
  const multimodal_store back = multimodal_store::open(dir.path());
  CHECK(back.size("text") == 20);
  const neighbors found =
      back.search("image", back.to_shared("text", data.text_train.view().slice(0, 1)).view(), "text", 1);
  CHECK(found.id(0, 0) == 105);
}

TEST_CASE("multimodal_store: a save cut off before its manifest leaves the previous store whole", "[multimodal][io]") {
  // A crash after a save wrote its collections but before it renamed the manifest leaves the previous
  // manifest beside whatever the save wrote: built here as a copy of the directory before the save with
  // the directory after it copied over (the previous manifest kept).
  const scratch_dir dir("shoal-mm-cut"), before("shoal-mm-cut-before"), cut("shoal-mm-cut-state");
  const auto cut_off = [&] {
    using std::filesystem::copy_options;
    std::filesystem::remove_all(cut.path());
    std::filesystem::copy(before.path(), cut.path(), copy_options::recursive);
    std::filesystem::copy(dir.path(), cut.path(), copy_options::recursive | copy_options::overwrite_existing);
    std::filesystem::copy_file(before.path() / "MULTIMODAL.shoal", cut.path() / "MULTIMODAL.shoal",
                               copy_options::overwrite_existing);
  };
  const auto snapshot = [&] {
    std::filesystem::remove_all(before.path());
    std::filesystem::copy(dir.path(), before.path(), std::filesystem::copy_options::recursive);
  };
  const projection p1 = random_map(6, 8, 71), p2 = random_map(6, 8, 72);
  const matrix<float> six = normal_matrix(3, 6, 73);
  {
    multimodal_store store({.shared_dim = 8, .shared_metric = metric::l2});
    store.add_modality("image", modality(8, metric::l2, "Flat", true));
    modality_options text = modality(6, metric::l2);
    text.to_shared = p1;  // not orthogonal: a mirror
    store.add_modality("text", text);
    store.add_version("text", "old", text);
    store.add("text", six.view(), iota_ids(3), "old");
    store.save(dir.path());
    snapshot();
    // (a) A version dropped and made again with another dimension.
    store.drop_version("text", "old");
    modality_options wider = modality(10, metric::l2);
    wider.to_shared = random_map(10, 8, 74);
    store.add_version("text", "old", wider);
    store.save(dir.path());
  }
  cut_off();
  {
    const multimodal_store back = multimodal_store::open(cut.path());
    CHECK(back.info("text", "old").collection.dim == 6);
    CHECK(back.size("text", "old") == 3);
  }
  CHECK(multimodal_store::open(dir.path()).info("text", "old").collection.dim == 10);

  // (b) An opened store: a mirrored version's projection changed while it was empty, then filled.
  {
    multimodal_store store = multimodal_store::open(dir.path());
    store.set_projection("text", p2);
    store.add("text", six.view(), iota_ids(3));
    snapshot();  // the adds are in the version's log; the manifest still names the old projection
    store.save(dir.path());
  }
  cut_off();
  {
    // The previous manifest's projection, and a mirror that agrees with it (brought in line by open).
    const multimodal_store back = multimodal_store::open(cut.path());
    REQUIRE(back.info("text").to_shared == p1);
    const neighbors hit = back.search("image", p1.apply(six.view()).view(), "text", 1);
    for (std::size_t r = 0; r < 3; ++r) {
      CHECK(hit.id(r, 0) == r);
      CHECK(hit.distance(r, 0) < 1e-6f);
    }
  }

  // (c) A filled mirrored version switched to an orthogonal projection (no mirror), then upserted: the
  // version was saved in place, and the cut state paired it with the previous manifest's old mirror,
  // which the upsert never reached (id 1 kept its old projection there).
  const projection r1 = random_map(8, 8, 75), r2 = random_rotation(8, 76);
  const matrix<float> eight = normal_matrix(3, 8, 77), moved = normal_matrix(1, 8, 78);
  {
    multimodal_store store = multimodal_store::open(dir.path());
    modality_options audio = modality(8, metric::l2);
    audio.to_shared = r1;
    store.add_modality("audio", audio);
    store.add("audio", eight.view(), iota_ids(3));
    store.save(dir.path());
    store.set_projection("audio", r2);
    REQUIRE(store.info("audio").route == shared_route::adjoint);
    store.upsert("audio", moved.view(), std::vector<vector_id>{1});
    snapshot();  // the upsert is in the version's log, the manifest still names the mirror
    store.save(dir.path());
  }
  cut_off();
  {
    const multimodal_store back = multimodal_store::open(cut.path());
    REQUIRE(back.info("audio").to_shared == r1);
    const neighbors hit = back.search("image", r1.apply(moved.view()).view(), "audio", 1);
    CHECK(hit.id(0, 0) == 1);
    CHECK(hit.distance(0, 0) < 1e-6f);
  }
}

TEST_CASE("multimodal_store: a mirror write that fails after the version's is made good before the next write or save",
          "[multimodal][io]") {
  // A file size limit stands in for a full disk, sized so that the version's log takes the upsert and
  // its mirror's (twice the dimension) does not. Before, a save then kept the mirror's old vector for good.
  const scratch_dir dir("shoal-mm-pending");
  const projection p = random_map(4, 8, 81);
  const matrix<float> x = normal_matrix(10, 4, 82), fresh = normal_matrix(2, 4, 83);
  {
    multimodal_store store({.shared_dim = 8, .shared_metric = metric::l2});
    store.add_modality("image", modality(8, metric::l2, "Flat", true));
    modality_options text = modality(4, metric::l2);
    text.to_shared = p;
    store.add_modality("text", text);
    REQUIRE(store.info("text").route == shared_route::mirror);
    store.save(dir.path());
  }
  multimodal_store store = multimodal_store::open(dir.path());
  store.add("text", x.view(), iota_ids(10));
  const std::filesystem::path mirror_log = dir.path() / "text" / "v1" / "shared" / "wal.log";
  REQUIRE(std::filesystem::exists(mirror_log));
  // `limit`: the largest file size (the mirror's record for the write must not fit, the version's must).
  const auto failing = [&](std::uintmax_t limit, auto&& write) {
    (void)::signal(SIGXFSZ, SIG_IGN);
    rlimit old{};
    REQUIRE(::getrlimit(RLIMIT_FSIZE, &old) == 0);
    rlimit cap = old;
    cap.rlim_cur = limit;
    REQUIRE(::setrlimit(RLIMIT_FSIZE, &cap) == 0);
    bool io = false;
    try {
      write();
    } catch (const shoal::error& e) {
      io = e.code() == errc::io_error;
      INFO(e.what());
    }
    INFO("mirror log " << std::filesystem::file_size(mirror_log) << " cap " << cap.rlim_cur);
    REQUIRE(::setrlimit(RLIMIT_FSIZE, &old) == 0);
    CHECK(io);
  };
  const auto finds = [&](const multimodal_store& s, const matrix_view<const float> v, vector_id id) {
    const neighbors hit = s.search("image", p.apply(v).view(), "text", 1);
    CHECK(hit.id(0, 0) == id);
    CHECK(hit.distance(0, 0) < 1e-6f);
  };
  // An upsert, then a save: the save writes the mirror's entry first (checked after reopening, below).
  const auto mirror_room = [&](std::uintmax_t bytes) { return std::filesystem::file_size(mirror_log) + bytes; };
  failing(mirror_room(60), [&] { store.upsert("text", fresh.view().slice(0, 1), std::vector<vector_id>{3}); });
  store.save(dir.path());
  finds(store, fresh.view().slice(0, 1), 3);
  // An upsert, then another write: that write makes it good first.
  failing(mirror_room(60), [&] { store.upsert("text", fresh.view().slice(1, 1), std::vector<vector_id>{4}); });
  store.upsert("text", x.view().slice(0, 1), std::vector<vector_id>{0});
  finds(store, fresh.view().slice(1, 1), 4);
  // A remove: the id left in the mirror went on answering searches, and adding it again failed as a
  // duplicate while the version said it was not stored.
  failing(mirror_room(30), [&] { store.remove("text", std::vector<vector_id>{5}); });
  CHECK_FALSE(store.contains("text", 5));
  store.add("text", x.view().slice(5, 1), std::vector<vector_id>{5});
  finds(store, x.view().slice(5, 1), 5);
  // An add whose mirror write fails and whose taking back from the version fails too (its log has
  // room for the add's record, 48 bytes, not for the remove's, 32): the mirror is owed the vector.
  const std::filesystem::path own_log = dir.path() / "text" / "v1" / "native" / "wal.log";
  REQUIRE(std::filesystem::file_size(mirror_log) > std::filesystem::file_size(own_log) + 15);
  const matrix<float> late = normal_matrix(1, 4, 84);
  failing(std::filesystem::file_size(own_log) + 79,
          [&] { store.add("text", late.view(), std::vector<vector_id>{77}); });
  CHECK(store.contains("text", 77));
  store.upsert("text", x.view().slice(0, 1), std::vector<vector_id>{0});
  finds(store, late.view(), 77);
  store.save(dir.path());
  { const multimodal_store closing = std::move(store); }
  const multimodal_store back = multimodal_store::open(dir.path());
  finds(back, fresh.view().slice(0, 1), 3);
  finds(back, fresh.view().slice(1, 1), 4);
  finds(back, late.view(), 77);
  CHECK(back.size("text") == 11);
}

TEST_CASE("multimodal_store: a mirror write that fails and then runs out of memory recording it is still made good",
          "[multimodal][io]") {
  // The mirror's log refuses an upsert (a file size limit), and one allocation fails at each point of the
  // call in turn. Recording what the mirror is owed allocated in the handler: out of memory there lost
  // the record (and replaced the I/O error), and the mirror kept the old vector for good (a review).
  const projection p = random_map(4, 8, 85);
  const matrix<float> x = normal_matrix(10, 4, 86), fresh = normal_matrix(1, 4, 87);
  std::size_t recorded = 0;
  for (std::size_t point = 0;; ++point) {
    CAPTURE(point);
    const scratch_dir dir("shoal-mm-pending-oom");
    {
      multimodal_store store({.shared_dim = 8, .shared_metric = metric::l2});
      store.add_modality("image", modality(8, metric::l2, "Flat", true));
      modality_options text = modality(4, metric::l2);
      text.to_shared = p;
      store.add_modality("text", text);
      store.save(dir.path());
    }
    multimodal_store store = multimodal_store::open(dir.path());
    store.add("text", x.view(), iota_ids(10));
    const std::filesystem::path mirror_log = dir.path() / "text" / "v1" / "shared" / "wal.log";
    (void)::signal(SIGXFSZ, SIG_IGN);
    rlimit old{};
    REQUIRE(::getrlimit(RLIMIT_FSIZE, &old) == 0);
    rlimit cap = old;
    cap.rlim_cur = std::filesystem::file_size(mirror_log) + 60;  // the version's record fits, the mirror's not
    REQUIRE(::setrlimit(RLIMIT_FSIZE, &cap) == 0);
    bool injected = false, io = false;
    {
      const test::allocation_failure failure(point, /*every_thread=*/true);
      try {
        store.upsert("text", fresh.view(), std::vector<vector_id>{3});
      } catch (const shoal::error& e) {
        io = e.code() == errc::io_error;
      } catch (const std::bad_alloc&) {
      }
      injected = failure.happened();
    }
    REQUIRE(::setrlimit(RLIMIT_FSIZE, &old) == 0);
    if (io) ++recorded;
    try {
      store.upsert("text", x.view().slice(0, 1), std::vector<vector_id>{0});  // makes the mirror good first
    } catch (const shoal::error& e) {
      // Out of memory while a shard applied the upsert: the version's collection refuses writes until it
      // is reopened (docs/collection.md), and the reopen brings the mirror in line from the logs.
      REQUIRE_THAT(e.what(), Catch::Matchers::Contains("until the collection is reopened"));
      { const multimodal_store closing = std::move(store); }
      store = multimodal_store::open(dir.path());
    }
    // Which vector the version holds for id 3 now (the upsert may have stopped before it).
    const bool upserted = store.search("text", fresh.view(), "text", 1).distance(0, 0) < 1e-6f;
    const neighbors hit =
        store.search("image", p.apply(upserted ? fresh.view() : x.view().slice(3, 1)).view(), "text", 1);
    CHECK(hit.id(0, 0) == 3);
    CHECK(hit.distance(0, 0) < 1e-6f);
    if (!injected) break;
  }
  CHECK(recorded > 0);
}

TEST_CASE("multimodal_store: a write the version refuses keeps none of the room made for its mirror record",
          "[multimodal]") {
  // Room for what a failed mirror write owes is made before the version's write; a batch the version
  // refused kept it (32 bytes per id) until a later write went through, for good on a store only searched
  // afterwards (a review: 3.2 MB for 100,000 ids). Heap in use from glibc's allocator statistics.
  const auto heap_in_use = [] {
    const struct mallinfo2 mi = ::mallinfo2();
    return mi.uordblks + mi.hblkhd;
  };
  multimodal_store store({.shared_dim = 8, .shared_metric = metric::l2});
  store.add_modality("image", modality(8, metric::l2, "Flat", true));
  modality_options text = modality(4, metric::l2);
  text.to_shared = random_map(4, 8, 88);
  store.add_modality("text", text);
  store.add("text", normal_matrix(10, 4, 89).view(), iota_ids(10));
  constexpr std::size_t n = 100000;
  const matrix<float> big = normal_matrix(n, 4, 90);
  std::vector<vector_id> ids(n);
  std::iota(ids.begin(), ids.end(), vector_id{1000});
  ids.back() = 3;  // stored already: the version's add refuses the batch
  ::malloc_trim(0);
  const std::size_t before = heap_in_use();
  REQUIRE_THROWS_MATCHES(store.add("text", big.view(), ids), shoal::error,
                         fails_with(errc::duplicate_id, "is already stored"));
  CHECK(heap_in_use() < before + n * 16);
  // A remove of stored ids and one that is not: the version refuses it whole.
  ids.back() = 999;
  store.add("text", big.view(), ids);
  ids.back() = 500;
  ::malloc_trim(0);
  const std::size_t stored = heap_in_use();
  REQUIRE_THROWS_MATCHES(store.remove("text", ids), shoal::error, fails_with(errc::not_found, "is not stored"));
  CHECK(heap_in_use() < stored + n * 16);
}

TEST_CASE("multimodal_store: an add a crash cut short is taken back from a version that keeps only codes",
          "[multimodal][io]") {
  // The version's log holds the add, its mirror's does not, and the version cannot give the vectors
  // back to project them: `open` failed with corrupt_file for good. The add never returned.
  const two_encoders data(400, 20, 0.2f);
  const scratch_dir dir("shoal-mm-codes-cut");
  {
    multimodal_store store = code_store(data);
    store.add("text", data.text_test.view().slice(0, 10), iota_ids(10));
    store.save(dir.path());
  }
  {  // the crash state: the version's collection written alone
    collection own = collection::open(dir.path() / "text" / "v1" / "native");
    own.add(data.text_test.view().slice(10, 1), std::vector<vector_id>{999});
  }
  {
    const multimodal_store back = multimodal_store::open(dir.path());
    CHECK_FALSE(back.contains("text", 999));
    CHECK(back.size("text") == 10);
  }
  CHECK(multimodal_store::open(dir.path()).size("text") == 10);
}

TEST_CASE("multimodal_store: writes during a save that reopens a version all land, and survive a restart",
          "[multimodal][io][concurrency]") {
  constexpr std::size_t dim = 8, writes = 400;
  const scratch_dir dir("shoal-mm-reopen");
  multimodal_store({.shared_dim = dim, .shared_metric = metric::l2}).save(dir.path());
  const matrix<float> vectors = normal_matrix(writes, dim, 61);
  {
    multimodal_store back = multimodal_store::open(dir.path());
    back.add_modality("image", modality(dim, metric::l2, "Flat", true));  // in memory until saved
    std::atomic<std::size_t> done{0};
    std::thread writer([&] {
      for (std::size_t i = 0; i < writes; ++i) {
        back.add("image", vectors.view().slice(i, 1), std::vector<vector_id>{i});
        done.store(i + 1);
      }
    });
    while (done.load() < writes / 4) std::this_thread::yield();
    back.save(dir.path());  // saves and reopens "image" while the writer keeps adding
    writer.join();
    CHECK(back.size("image") == writes);
  }
  const multimodal_store again = multimodal_store::open(dir.path());
  CHECK(again.size("image") == writes);
}

TEST_CASE("multimodal_store: a sample or query that projects badly is refused before anything trains or searches",
          "[multimodal]") {
  // A review (session 38): a mirror that refused the projected sample (a row projecting to zero under a
  // cosine shared metric) left the version's own collection trained on it, and a corrected sample was
  // then ignored (a trained empty collection ignores `train`); a query projecting to zero was reported by
  // the collection searched, and one projecting to NaN came back from `to_shared` unnoticed.
  multimodal_store store({.shared_dim = 8, .shared_metric = metric::cosine});
  store.add_modality("image", modality(8, metric::cosine, "Flat", true));
  modality_options text = modality(6, metric::cosine, "IVF2,Flat");
  std::vector<float> w(48, 0.0f);
  for (std::size_t i = 0; i < 5; ++i) w[i * 6 + i] = 1.0f;  // drops input dimension 5
  text.to_shared = projection(6, 8, w);
  store.add_modality("text", text);
  REQUIRE(store.info("text").route == shared_route::mirror);
  const std::size_t untrained = store.info("text").memory_bytes;
  matrix<float> sample = normal_matrix(300, 6, 61);
  for (std::size_t j = 0; j < 6; ++j) sample.row(7)[j] = j == 5 ? 1.0f : 0.0f;  // projects to zero
  CHECK_THROWS_MATCHES(store.train("text", sample.view()), shoal::error,
                       fails_with(errc::invalid_argument, "multimodal_store::train: projected sample row 7"));
  CHECK(store.info("text").memory_bytes == untrained);  // the version's collection trained on nothing
  // The projected sample is checked a block of 4,096 rows at a time, each row named from its block.
  matrix<float> longer = normal_matrix(4200, 6, 64);
  for (std::size_t j = 0; j < 6; ++j) longer.row(4100)[j] = j == 5 ? 1.0f : 0.0f;
  CHECK_THROWS_MATCHES(store.train("text", longer.view()), shoal::error,
                       fails_with(errc::invalid_argument, "projected sample from row 4096: row 4 "));
  CHECK(store.info("text").memory_bytes == untrained);
  sample.row(7)[0] = 1.0f;
  store.train("text", sample.view());
  CHECK(store.info("text").memory_bytes > untrained);
  store.add("text", normal_matrix(4, 6, 62).view(), iota_ids(4));
  store.add("image", normal_matrix(4, 8, 63).view(), iota_ids(4));
  const std::vector<float> along_dropped = {0, 0, 0, 0, 0, 1};
  CHECK_THROWS_MATCHES(store.search("text", matrix_view<const float>{along_dropped.data(), 1, 6}, "image", 2),
                       shoal::error,
                       fails_with(errc::invalid_argument, "multimodal_store::search: projected query row 0"));
  modality_options audio = modality(6, metric::l2);
  audio.to_shared = projection(6, 8, std::vector<float>(48, 3e38f));
  store.add_modality("audio", audio);
  CHECK_THROWS_MATCHES(store.to_shared("audio", sample.view().slice(0, 1)), shoal::error,
                       fails_with(errc::non_finite, "projection::apply: projected row 0"));
}

TEST_CASE("multimodal_store: bad modalities, versions, dimensions and routes are shoal::errors naming the problem",
          "[multimodal]") {
  multimodal_store store({.shared_dim = 8, .shared_metric = metric::cosine});
  store.add_modality("image", modality(8, metric::cosine, "Flat", true));
  store.add_modality("text", modality(6, metric::cosine));
  const matrix<float> eight = normal_matrix(4, 8, 51), six = normal_matrix(4, 6, 52), five = normal_matrix(4, 5, 53);
  store.add("image", eight.view(), iota_ids(4));

  // Unknown names.
  CHECK_THROWS_MATCHES(store.search("sound", eight.view(), "image", 3), shoal::error,
                       fails_with(errc::not_found, "unknown modality 'sound'"));
  CHECK_THROWS_MATCHES(store.search("image", eight.view(), "sound", 3), shoal::error,
                       fails_with(errc::not_found, "'sound'"));
  CHECK_THROWS_MATCHES(store.activate("image", "v9"), shoal::error, fails_with(errc::not_found, "no version 'v9'"));
  CHECK_THROWS_MATCHES(store.drop_version("text", "v9"), shoal::error, fails_with(errc::not_found, "no version"));
  CHECK_THROWS_MATCHES(store.add("image", eight.view(), iota_ids(4, 10), "v9"), shoal::error,
                       fails_with(errc::not_found, "no version"));
  CHECK_THROWS_MATCHES(store.add_version("sound", "v1", modality(8, metric::l2)), shoal::error,
                       fails_with(errc::not_found, "'sound'"));
  CHECK_THROWS_MATCHES(store.link("text", iota_ids(1), "sound", iota_ids(1)), shoal::error,
                       fails_with(errc::not_found, "'sound'"));

  // Dimensions.
  CHECK_THROWS_MATCHES(store.search("image", six.view(), "image", 3), shoal::error,
                       fails_with(errc::dimension_mismatch, "queries of modality 'image' have dimension 6"));
  CHECK_THROWS_MATCHES(store.add("text", five.view(), iota_ids(4)), shoal::error,
                       fails_with(errc::dimension_mismatch, "version 'v1' has 6"));
  CHECK_THROWS_MATCHES(store.set_projection("text", random_map(5, 8, 54)), shoal::error,
                       fails_with(errc::dimension_mismatch, "maps 5 to 8"));
  CHECK_THROWS_MATCHES(store.fit_projection("text", six.view(), six.view()), shoal::error,
                       fails_with(errc::dimension_mismatch, "y rows have dimension 6"));
  CHECK_THROWS_MATCHES(store.add_modality("audio", modality(7, metric::cosine, "Flat", true)), shoal::error,
                       fails_with(errc::dimension_mismatch, "native"));

  // No path through the shared space.
  CHECK_THROWS_MATCHES(store.search("text", six.view(), "image", 3), shoal::error,
                       fails_with(errc::unsupported, "'text' (version 'v1') has no projection"));
  CHECK_THROWS_MATCHES(store.search("image", eight.view(), "text", 3), shoal::error,
                       fails_with(errc::unsupported, "cannot be searched from other modalities"));
  CHECK_THROWS_MATCHES(store.to_shared("text", six.view()), shoal::error, fails_with(errc::unsupported));
  modality_options quiet = modality(6, metric::cosine);
  quiet.to_shared = random_map(6, 8, 55);
  quiet.searchable = false;
  store.add_modality("notes", quiet);
  CHECK(store.info("notes").route == shared_route::query_only);
  CHECK(store.search("notes", six.view(), "image", 2).id(0, 0) != no_id);
  CHECK_THROWS_MATCHES(store.search("image", eight.view(), "notes", 3), shoal::error,
                       fails_with(errc::unsupported, "searchable = false"));
  modality_options hidden = modality(8, metric::cosine, "Flat", true);
  hidden.searchable = false;  // native, yet hidden from other modalities as well
  store.add_modality("hidden", hidden);
  store.add("hidden", eight.view(), iota_ids(4));
  CHECK_THROWS_MATCHES(store.search("image", eight.view(), "hidden", 3), shoal::error,
                       fails_with(errc::unsupported, "searchable = false"));
  CHECK(store.search("hidden", eight.view(), "hidden", 1).id(0, 0) == 0);  // its own queries still search it
  // NaN/Inf in a fit is reported as such, not as a zero norm.
  matrix<float> nan_rows = normal_matrix(4, 6, 58);
  nan_rows.row(2)[1] = std::nanf("");
  CHECK_THROWS_MATCHES(store.fit_projection("text", nan_rows.view(), eight.view()), shoal::error,
                       fails_with(errc::non_finite));
  // A method outside the enum (a config integer cast) was fitted as ridge; a native modality was refused
  // only after the solve (here Procrustes' own dimension error came first).
  CHECK_THROWS_MATCHES(
      store.fit_projection("text", six.view(), eight.view(), {.method = static_cast<projection_method>(9)}),
      shoal::error, fails_with(errc::invalid_argument, "unknown projection_method 9"));
  CHECK_THROWS_MATCHES(
      store.fit_projection("image", six.view(), eight.view(), {.method = projection_method::procrustes}), shoal::error,
      fails_with(errc::invalid_argument, "native to the shared space"));

  // A mirrored projection cannot change once vectors are stored.
  store.set_projection("text", random_map(6, 8, 56, true));
  store.add("text", six.view(), iota_ids(4));
  CHECK_THROWS_MATCHES(store.set_projection("text", random_map(6, 8, 57)), shoal::error,
                       fails_with(errc::unsupported, "holds 4 vectors"));
  CHECK(store.search("image", eight.view(), "text", 4).id(0, 3) != no_id);
  // A bad query across modalities is named as this call's query (it read "vector row 0 ...").
  matrix<float> nan_query = normal_matrix(1, 6, 60);
  nan_query.row(0)[0] = std::nanf("");
  CHECK_THROWS_MATCHES(store.search("text", nan_query.view(), "image", 3), shoal::error,
                       fails_with(errc::non_finite, "multimodal_store::search: query row 0"));
  CHECK_THROWS_MATCHES(store.search_via_pairs("text", nan_query.view(), "image", 3), shoal::error,
                       fails_with(errc::non_finite, "multimodal_store::search_via_pairs: query row 0"));
  // Writes to a mirrored version are all or nothing, in both collections.
  matrix<float> bad = normal_matrix(2, 6, 59);
  bad.row(1)[2] = std::nanf("");
  CHECK_THROWS_MATCHES(store.add("text", bad.view(), iota_ids(2, 10)), shoal::error, fails_with(errc::non_finite));
  CHECK_THROWS_MATCHES(store.add("text", six.view().slice(0, 2), std::vector<vector_id>{10, 3}), shoal::error,
                       fails_with(errc::duplicate_id));
  CHECK(store.size("text") == 4);
  CHECK(store.info("text").mirror_bytes > 0);
  store.remove("text", std::vector<vector_id>{3});
  CHECK_FALSE(store.contains("text", 3));
  CHECK(store.search("image", eight.view(), "text", 4).id(0, 3) == no_id);  // gone from the mirror too
  CHECK_THROWS_MATCHES(store.remove("text", std::vector<vector_id>{3}), shoal::error, fails_with(errc::not_found));
  // A projection that maps a vector to zero (no direction under the cosine shared metric): refused
  // before either collection changes, for an upsert as for an add.
  std::vector<float> flat_w(8 * 6, 0.0f);
  for (std::size_t i = 0; i < 5; ++i) flat_w[i * 6 + i] = 1.0f;  // the sixth input dimension is dropped
  store.add_modality("caption", modality(6, metric::cosine));
  store.set_projection("caption", projection(6, 8, flat_w));
  REQUIRE(store.info("caption").route == shared_route::mirror);
  store.add("caption", six.view().slice(0, 1), std::vector<vector_id>{1});
  matrix<float> dropped(1, 6);
  dropped.row(0)[5] = 1.0f;
  CHECK_THROWS_MATCHES(store.upsert("caption", dropped.view(), std::vector<vector_id>{1}), shoal::error,
                       fails_with(errc::invalid_argument, "projected vector"));
  CHECK_THROWS_MATCHES(store.upsert("caption", dropped.view(), std::vector<vector_id>{2}), shoal::error,
                       fails_with(errc::invalid_argument, "projected vector"));
  CHECK_FALSE(store.contains("caption", 2));
  const neighbors kept = store.search("caption", six.view().slice(0, 1), "caption", 1);
  CHECK(kept.id(0, 0) == 1);
  CHECK(kept.distance(0, 0) < 1e-5f);  // still the vector added, not the refused one
  // The reserved no_id cannot be linked: it marks a missing result.
  CHECK_THROWS_MATCHES(store.link("text", std::vector<vector_id>{no_id}, "image", iota_ids(1)), shoal::error,
                       fails_with(errc::invalid_argument, "reserved"));

  // Bad names and options.
  CHECK_THROWS_MATCHES(store.add_modality("image", modality(8, metric::cosine)), shoal::error,
                       fails_with(errc::invalid_argument, "exists already"));
  CHECK_THROWS_MATCHES(store.add_modality("../x", modality(8, metric::cosine)), shoal::error,
                       fails_with(errc::invalid_argument, "modality name \"../x\""));
  CHECK_THROWS_MATCHES(store.add_modality("MULTIMODAL.shoal", modality(8, metric::cosine)), shoal::error,
                       fails_with(errc::invalid_argument, "MULTIMODAL.shoal"));
  CHECK_THROWS_MATCHES(store.add_version("image", "", modality(8, metric::cosine)), shoal::error,
                       fails_with(errc::invalid_argument, "version name"));
  CHECK_THROWS_MATCHES(store.add_version("image", "v1", modality(8, metric::cosine)), shoal::error,
                       fails_with(errc::invalid_argument, "already"));
  modality_options with_dir = modality(8, metric::cosine);
  with_dir.collection.directory = "/tmp/somewhere";
  CHECK_THROWS_MATCHES(store.add_modality("audio", with_dir), shoal::error,
                       fails_with(errc::invalid_argument, "directory must be empty"));
  CHECK_THROWS_MATCHES(store.add_modality("audio", modality(8, metric::l2, "Flat", true)), shoal::error,
                       fails_with(errc::invalid_argument, "metric l2"));
  CHECK_THROWS_MATCHES(store.add_modality("audio", modality(8, metric::cosine, "Flt")), shoal::error,
                       fails_with(errc::invalid_argument, "Flt"));
  CHECK_THROWS_MATCHES(store.set_projection("image", random_map(8, 8, 58)), shoal::error,
                       fails_with(errc::invalid_argument, "native"));
  CHECK_THROWS_MATCHES(store.drop_version("image", "v1"), shoal::error,
                       fails_with(errc::invalid_argument, "is active"));
  CHECK_THROWS_MATCHES(multimodal_store({.shared_dim = 0}), shoal::error,
                       fails_with(errc::invalid_argument, "shared dimension"));
  // A metric outside the enum was kept and saved, and the store could not be opened again.
  CHECK_THROWS_MATCHES(multimodal_store({.shared_dim = 8, .shared_metric = static_cast<metric>(7)}), shoal::error,
                       fails_with(errc::invalid_argument, "shared metric: unknown metric 7"));
  CHECK_THROWS_MATCHES(store.link("text", iota_ids(2), "image", iota_ids(1)), shoal::error,
                       fails_with(errc::invalid_argument, "2 ids of 'text' but 1"));
  CHECK_THROWS_MATCHES(store.link("text", iota_ids(1), "text", iota_ids(1)), shoal::error,
                       fails_with(errc::invalid_argument, "itself"));
  CHECK_THROWS_MATCHES(store.search_via_pairs("text", six.view(), "text", 3), shoal::error,
                       fails_with(errc::invalid_argument, "another modality"));
  CHECK_THROWS_MATCHES(store.search_via_pairs("text", six.view(), "image", 0), shoal::error,
                       fails_with(errc::invalid_argument, "k must"));
  CHECK_THROWS_MATCHES(store.add("image", eight.view(), iota_ids(4)), shoal::error, fails_with(errc::duplicate_id));
  CHECK(store.size("image") == 4);
}

TEST_CASE("multimodal_store and collection: open refuses a verify level outside the enum before it reads",
          "[multimodal][io]") {
  // An empty store took 9 and refused it only in a later save, after committing its manifest; a
  // collection took its directory's lock and removed leftovers first (a review).
  const scratch_dir dir("shoal-mm-store");
  const auto nine = static_cast<verify_level>(9);
  const auto unknown = fails_with(errc::invalid_argument, "unknown verify level 9");
  multimodal_store({.shared_dim = 4, .shared_metric = metric::l2}).save(dir / "store");
  REQUIRE_THROWS_MATCHES(multimodal_store::open(dir / "store", {.verify = nine}), shoal::error, unknown);
  collection_options o;
  o.dim = 4;
  o.index = "Flat";
  o.shards = 1;
  o.directory = dir / "collection";
  { collection c(o); }
  REQUIRE_THROWS_MATCHES(collection::open(dir / "collection", {.verify = nine}), shoal::error, unknown);
  CHECK(collection::open(dir / "collection").size() == 0);
}

}  // namespace
}  // namespace shoal
