// cross_modal_search: caption → image and image → caption retrieval through a shoal::multimodal_store.
//
//   cross_modal_search                   generated data (seeded): 100 images x 5 captions, in two spaces
//   cross_modal_search --images I.fvecs --texts T.fvecs --pairs P.ivecs [--index SPEC] [--k 10]
//   (--k: results searched per query, 10 to 1,024; the report reads R@1, R@5 and R@10 from them)
//                                        real vectors; row j of P.ivecs is the image row caption j describes
//
// Images and captions of the same dimension are taken to share one space (CLIP): both modalities are
// native to the store's shared space. Otherwise — the generated data, whose captions come from another
// "encoder" — a ridge projection from caption space into image space is fitted through the store, from
// separate training pairs (generated) or from the given pairs themselves (files: an in-sample fit).
// When `<prefix>_captions.tsv` (and `<prefix>_images.tsv`) sit beside the caption file, a few hits are
// shown with their text. The last two lines compare the indexed search with brute force:
//   text2image indexed R@1=… R@5=… R@10=…
//   text2image exact R@1=… R@5=… R@10=…
// where R@n is the fraction of captions whose paired image is among the first n results.

#include <algorithm>
#include <array>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <filesystem>
#include <fstream>
#include <numeric>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include "args.hpp"
#include "shoal/eval/eval.hpp"
#include "shoal/index/flat.hpp"
#include "shoal/io/vecs.hpp"
#include "shoal/multimodal/store.hpp"

namespace {

namespace fs = std::filesystem;

struct options {
  fs::path images, texts, pairs;
  std::string index = "HNSW32";
  std::size_t k = 10;
};

options parse(int argc, char** argv) {
  options opt;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg == "-h" || arg == "--help") {
      std::puts("usage: cross_modal_search [--images I.fvecs --texts T.fvecs --pairs P.ivecs] [--index SPEC] [--k K]");
      std::exit(0);
    }
    if (i + 1 >= argc) throw std::invalid_argument("unknown argument or missing value: " + arg);
    const std::string value = argv[++i];
    if (arg == "--images")
      opt.images = value;
    else if (arg == "--texts")
      opt.texts = value;
    else if (arg == "--pairs")
      opt.pairs = value;
    else if (arg == "--index")
      opt.index = value;
    else if (arg == "--k")
      opt.k = shoal::examples::whole_number("--k", value, 10, 1024);  // the report reads R@10
    else
      throw std::invalid_argument("unknown argument: " + arg);
  }
  const bool any = !opt.images.empty() || !opt.texts.empty() || !opt.pairs.empty();
  if (any && (opt.images.empty() || opt.texts.empty() || opt.pairs.empty()))
    throw std::invalid_argument("give --images, --texts and --pairs together (or none: generated data)");
  return opt;
}

struct dataset {
  shoal::matrix<float> images, texts;
  std::vector<std::size_t> image_of;               // caption row → image row
  shoal::matrix<float> train_images, train_texts;  // paired rows for fitting a projection (may be empty)
  std::vector<std::string> captions, image_names;  // from the .tsv files, when present
};

/// rows x dim values: `latent` through a fixed random linear map, plus `noise` per component.
shoal::matrix<float> encode(const shoal::matrix<float>& latent, std::size_t dim, std::uint64_t map_seed, float noise,
                            std::uint64_t noise_seed) {
  shoal::splitmix64 map(map_seed), rng(noise_seed);
  std::vector<float> w(dim * latent.dim);
  for (float& v : w) v = map.normal();
  const shoal::projection encoder(latent.dim, dim, std::move(w));
  shoal::matrix<float> out = encoder.apply(latent.view());
  for (float& v : out.values) v += noise * rng.normal();
  return out;
}

/// `images` images per 16-d latent vector, each described by `per_image` captions: noisy copies of the
/// image's latent vector, encoded into another space.
void generate_pairs(std::size_t images, std::size_t per_image, std::uint64_t seed, shoal::matrix<float>& image_out,
                    shoal::matrix<float>& text_out, std::vector<std::size_t>& image_of) {
  constexpr std::size_t latent_dim = 16, image_dim = 64, text_dim = 48;
  shoal::splitmix64 rng(seed);
  shoal::matrix<float> latent(images, latent_dim), caption_latent(images * per_image, latent_dim);
  for (float& v : latent.values) v = rng.normal();
  image_of.resize(images * per_image);
  for (std::size_t c = 0; c < image_of.size(); ++c) {
    image_of[c] = c / per_image;
    for (std::size_t j = 0; j < latent_dim; ++j)
      caption_latent.row(c)[j] = latent.row(image_of[c])[j] + 0.7f * rng.normal();
  }
  image_out = encode(latent, image_dim, 1, 0.05f, seed + 1);
  text_out = encode(caption_latent, text_dim, 2, 0.05f, seed + 2);
}

/// The last tab-separated column of every line after the header.
std::vector<std::string> read_tsv_column(const fs::path& path) {
  std::vector<std::string> out;
  std::ifstream in(path);
  std::string line;
  for (bool header = true; std::getline(in, line); header = false)
    if (!header) out.push_back(line.substr(line.rfind('\t') + 1));
  return out;
}

dataset load(const options& opt) {
  dataset d;
  if (opt.images.empty()) {
    std::vector<std::size_t> train_of;
    shoal::matrix<float> train_images;
    generate_pairs(1000, 1, 7, train_images, d.train_texts, train_of);
    d.train_images = std::move(train_images);
    generate_pairs(100, 5, 2026, d.images, d.texts, d.image_of);
    std::printf(
        "data: generated (seed 2026), %zu images (%zu-d) x 5 captions (%zu-d); projection fitted on 1,000 "
        "other pairs\n",
        d.images.rows, d.images.dim, d.texts.dim);
    return d;
  }
  d.images = shoal::io::read_vectors(opt.images);
  d.texts = shoal::io::read_vectors(opt.texts);
  if (d.images.rows == 0 || d.texts.rows == 0)  // recall over no captions means nothing
    throw std::invalid_argument((d.images.rows == 0 ? opt.images : opt.texts).string() + ": no vectors");
  const shoal::matrix<std::int32_t> pairs = shoal::io::read_ids(opt.pairs);
  // One image row per caption: a file of wider rows (a ground-truth file, say) was read by its first
  // column and scored every caption against its nearest image instead (a review).
  if (pairs.dim != 1)
    throw std::invalid_argument(opt.pairs.string() + ": " + std::to_string(pairs.dim) +
                                " ids per row; a pairs file holds one, the image row of each caption");
  if (pairs.rows != d.texts.rows)
    throw std::invalid_argument(opt.pairs.string() + ": " + std::to_string(pairs.rows) + " rows for " +
                                std::to_string(d.texts.rows) + " captions");
  for (std::size_t c = 0; c < pairs.rows; ++c) {
    const std::int32_t row = pairs.row(c)[0];
    if (row < 0 || static_cast<std::size_t>(row) >= d.images.rows)
      throw std::invalid_argument(opt.pairs.string() + ": caption " + std::to_string(c) + " names image row " +
                                  std::to_string(row) + " of " + std::to_string(d.images.rows));
    d.image_of.push_back(static_cast<std::size_t>(row));
  }
  std::printf("data: %s (%zu x %zu), %s (%zu x %zu), %s\n", opt.images.c_str(), d.images.rows, d.images.dim,
              opt.texts.c_str(), d.texts.rows, d.texts.dim, opt.pairs.c_str());
  if (d.images.dim != d.texts.dim) {  // fit on the given pairs themselves
    // Said where the recall is read: it measures the fit on the pairs it was made from, not on unseen
    // captions (SIFT vectors as "images" scored R@1 0.998 in silence; a user-eyes review).
    std::printf(
        "note: images %zu-d, captions %zu-d: the caption projection is fitted on these same %zu pairs, so the "
        "recall below is in-sample\n",
        d.images.dim, d.texts.dim, d.texts.rows);
    d.train_texts = d.texts;
    d.train_images = shoal::matrix<float>(d.texts.rows, d.images.dim);
    for (std::size_t c = 0; c < d.texts.rows; ++c)
      std::copy_n(d.images.row(d.image_of[c]), d.images.dim, d.train_images.row(c));
  }
  // clip-flickr8k-100_text.fvecs → clip-flickr8k-100_captions.tsv, clip-flickr8k-100_images.tsv
  const std::string stem = opt.texts.stem().string();
  const fs::path prefix = opt.texts.parent_path() / stem.substr(0, stem.rfind('_'));
  if (fs::exists(prefix.string() + "_captions.tsv")) d.captions = read_tsv_column(prefix.string() + "_captions.tsv");
  if (fs::exists(prefix.string() + "_images.tsv")) d.image_names = read_tsv_column(prefix.string() + "_images.tsv");
  if (d.captions.size() != d.texts.rows) d.captions.clear();
  if (d.image_names.size() != d.images.rows) d.image_names.clear();
  return d;
}

/// R@1, R@5, R@10: the fraction of the query rows that can have a hit (`counted(row)`) with a hit
/// (`hit(row, id)`) among their first n results. An image no caption describes cannot: counted as a
/// miss, it held image2text recall at 0.5 over a perfect search (a review).
template <class Hit, class Counted>
std::array<double, 3> recall_at(const shoal::neighbors& found, const Hit& hit, const Counted& counted) {
  std::array<double, 3> out{};
  const std::array<std::size_t, 3> depth = {1, 5, 10};
  for (std::size_t i = 0; i < depth.size(); ++i) {
    std::size_t hits = 0, rows = 0;
    for (std::size_t q = 0; q < found.rows(); ++q) {
      if (!counted(q)) continue;
      ++rows;
      bool any = false;
      for (std::size_t j = 0; j < std::min(depth[i], found.k()); ++j) any = any || hit(q, found.id(q, j));
      hits += any ? 1 : 0;
    }
    out[i] = rows == 0 ? 0.0 : static_cast<double>(hits) / static_cast<double>(rows);
  }
  return out;
}

void print_recall(const char* label, const std::array<double, 3>& r) {
  std::printf("%s R@1=%.4f R@5=%.4f R@10=%.4f\n", label, r[0], r[1], r[2]);
}

std::string image_label(const dataset& d, shoal::vector_id id) {
  return "image " + std::to_string(id) + (d.image_names.empty() ? "" : " (" + d.image_names[id] + ")");
}

}  // namespace

int main(int argc, char** argv) try {
  const options opt = parse(argc, argv);
  const dataset d = load(opt);
  const std::size_t k = opt.k;

  // The store: images define the shared space; captions share it (same dim) or are projected into it.
  shoal::multimodal_store store({.shared_dim = d.images.dim, .shared_metric = shoal::metric::cosine});
  shoal::modality_options image;
  image.collection.dim = d.images.dim;
  image.collection.metric = shoal::metric::cosine;
  image.collection.index = opt.index;
  image.native = true;
  store.add_modality("image", image);
  shoal::modality_options text;
  text.collection = image.collection;
  text.collection.dim = d.texts.dim;
  text.native = d.texts.dim == d.images.dim;
  store.add_modality("text", text);
  if (!text.native) store.fit_projection("text", d.train_texts.view(), d.train_images.view(), {.lambda = 1e-3f});

  std::vector<shoal::vector_id> image_ids(d.images.rows), caption_ids(d.texts.rows), paired_images;
  std::iota(image_ids.begin(), image_ids.end(), shoal::vector_id{0});
  std::iota(caption_ids.begin(), caption_ids.end(), shoal::vector_id{0});
  for (const std::size_t row : d.image_of) paired_images.push_back(row);
  // Specs that train (IVF, PQ, SQ8) learn from the vectors themselves; a no-op for the others.
  store.train("image", d.images.view());
  store.train("text", d.texts.view());
  store.add("image", d.images.view(), image_ids);
  store.add("text", d.texts.view(), caption_ids);
  store.link("text", caption_ids, "image", paired_images);
  const shoal::modality_info text_info = store.info("text");
  std::printf("store: shared space %zu-d cosine; image: %s, native; text: %s, %zu-d, route %s; %.2f MiB\n",
              store.shared_dim(), opt.index.c_str(), opt.index.c_str(), d.texts.dim,
              shoal::shared_route_name(text_info.route), static_cast<double>(store.memory_bytes()) / (1 << 20));

  // Caption → image, directly through the shared space; image → caption the same way back.
  const shoal::search_params params{.ef = 128, .nprobe = 16};  // each index reads its own knob
  const shoal::neighbors text2image = store.search("text", d.texts.view(), "image", k, params);
  const shoal::neighbors image2text = store.search("image", d.images.view(), "text", k, params);
  const auto caption_hits_image = [&](std::size_t q, shoal::vector_id id) { return id == d.image_of[q]; };
  const auto image_hits_caption = [&](std::size_t q, shoal::vector_id id) {
    return id != shoal::no_id && d.image_of[id] == q;
  };

  // Caption → its nearest other captions → their images (paired ids), leaving the query caption out.
  shoal::neighbors via(d.texts.rows, k);
  for (std::size_t q = 0; q < d.texts.rows; ++q) {
    const auto others = [q](shoal::vector_id id) { return id != q; };
    const shoal::neighbors one =
        store.search_via_pairs("text", d.texts.view().slice(q, 1), "image", k, {.filter = others, .ef = 128});
    std::copy_n(one.row_ids(0).begin(), k, via.view().row_ids(q).begin());
  }

  if (!d.captions.empty()) {
    for (const std::size_t q : {std::size_t{0}, std::size_t{137}, std::size_t{402}}) {
      if (q >= d.texts.rows) continue;
      std::printf("\ncaption %zu: \"%s\" (describes %s)\n", q, d.captions[q].c_str(),
                  image_label(d, d.image_of[q]).c_str());
      for (std::size_t j = 0; j < 3; ++j) {
        const shoal::vector_id hit = text2image.id(q, j);
        if (hit == shoal::no_id) break;  // fewer images than hits asked for
        std::printf("  %zu. %s, distance %.4f%s\n", j + 1, image_label(d, hit).c_str(), text2image.distance(q, j),
                    hit == d.image_of[q] ? "  <- paired" : "");
      }
    }
    const std::size_t img = d.image_of[137 % d.texts.rows];
    std::printf("\n%s: nearest captions\n", image_label(d, img).c_str());
    for (std::size_t j = 0; j < 3; ++j) {
      const shoal::vector_id hit = image2text.id(img, j);
      if (hit == shoal::no_id) break;
      std::printf("  %zu. \"%s\"%s\n", j + 1, d.captions[hit].c_str(),
                  d.image_of[hit] == img ? "  <- describes it" : "");
    }
    std::printf("\n");
  }

  // Exact: brute force over the image vectors with the captions as the store maps them.
  shoal::flat_index exact_index(d.images.dim, shoal::metric::cosine);
  exact_index.add(d.images.view(), image_ids);
  const shoal::matrix<float> shared_captions = store.to_shared("text", d.texts.view());
  const shoal::neighbors exact = exact_index.search(shared_captions.view(), k);

  std::vector<bool> described(d.images.rows, false);
  for (const std::size_t img : d.image_of) described[img] = true;
  const auto has_caption = [&](std::size_t img) { return static_cast<bool>(described[img]); };
  const auto every = [](std::size_t) { return true; };
  const auto with_captions = static_cast<std::size_t>(std::count(described.begin(), described.end(), true));
  if (with_captions < d.images.rows)
    std::printf("image2text recall over the %zu of %zu images that a caption describes\n", with_captions,
                d.images.rows);
  print_recall("image2text indexed", recall_at(image2text, image_hits_caption, has_caption));
  print_recall("text2image via pairs (leave-one-out)", recall_at(via, caption_hits_image, every));
  print_recall("text2image indexed", recall_at(text2image, caption_hits_image, every));
  print_recall("text2image exact", recall_at(exact, caption_hits_image, every));
  return 0;
} catch (const std::exception& e) {
  std::fprintf(stderr, "cross_modal_search: %s\n", e.what());
  return 1;
}
